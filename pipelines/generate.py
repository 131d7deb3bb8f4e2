"""Ray job: sharded generation on the cluster the job runs in.

    ray job submit --working-dir . -- python -m pipelines.generate \
        --checkpoint /mnt/shared/rgm/runs/paper/models/pixelcnn --num-samples 150000 --shard-size 1000 \
        --seed 1 --out /mnt/shared/rgm/runs/paper/samples/pixelcnn_seed1 --gpus-per-worker 1
"""

import sys

from rgm_ray.cli.main import main

if __name__ == "__main__":
    sys.exit(main(["generate", *sys.argv[1:]]))
