"""Ray job: resample a weighted sample set on the cluster the job runs in.

    ray job submit --working-dir . -- python -m pipelines.resample \
        --samples /shared/rgm/pixelcnn_weighted --k 50000 --seed 0 --target-ess 5000 \
        --out /shared/rgm/pixelcnn_resampled
"""

import sys

from rgm_ray.cli.main import main

if __name__ == "__main__":
    sys.exit(main(["resample", *sys.argv[1:]]))
