"""Ray job: resample a weighted sample set on the cluster the job runs in.

    ray job submit --working-dir . -- python -m pipelines.resample \
        --samples /mnt/shared/rgm/runs/paper/weights/pixelcnn_seed1/weighted --k 10000 --seed 0 \
        --target-ess 5000 --out /mnt/shared/rgm/runs/paper/resampled/pixelcnn_seed1
"""

import sys

from rgm_ray.cli.main import main

if __name__ == "__main__":
    sys.exit(main(["resample", *sys.argv[1:]]))
