"""Ray job: the whole pipeline (train/load -> generate -> weigh -> resample -> evaluate -> ssl -> report).

    ray job submit --working-dir . -- python -m pipelines.full --preset paper --out /mnt/shared/rgm/paper \
        --set data.root=/mnt/shared/cifar10 --inception-weights /mnt/shared/weights/pt_inception.pth \
        --gpus-per-worker 1
"""

import sys

from rgm_ray.cli.main import main

if __name__ == "__main__":
    sys.exit(main(["pipeline", *sys.argv[1:]]))
