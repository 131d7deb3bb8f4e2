"""Ray job: calibrated, cross-fitted importance weights for a generated sample set on the job's cluster.

    ray job submit --working-dir . -- python -m pipelines.weigh \
        --real /mnt/shared/rgm/runs/paper/data/real_train --samples /mnt/shared/rgm/runs/paper/samples/pixelcnn_seed1 \
        --out /mnt/shared/rgm/runs/paper/weights/pixelcnn_seed1 --backbone inception \
        --inception-weights /mnt/shared/weights/pt_inception-2015-12-05-6726825d.pth --gpus-per-worker 1

``--out`` must be on storage every worker can read: the scorers load ``OUT/classifier/`` from there.
"""

import sys

from rgm_ray.cli.main import main

if __name__ == "__main__":
    sys.exit(main(["weigh", *sys.argv[1:]]))
