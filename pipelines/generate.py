"""Ray job: sharded generation on the cluster the job runs in.

    ray job submit --working-dir . -- python -m pipelines.generate \
        --checkpoint runs/paper/pixelcnn --num-samples 150000 --shard-size 1000 \
        --out /shared/rgm/pixelcnn_samples --gpus-per-worker 1
"""

import sys

from rgm_ray.cli.main import main

if __name__ == "__main__":
    sys.exit(main(["generate", *sys.argv[1:]]))
