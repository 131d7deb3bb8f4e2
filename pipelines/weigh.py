"""Ray job: calibrated, cross-fitted importance weights for a generated sample set on the job's cluster.

    ray job submit --working-dir . -- python -m pipelines.weigh \
        --real /shared/rgm/cifar10_train --samples /shared/rgm/pixelcnn_samples \
        --out /shared/rgm/pixelcnn_weights --backbone inception \
        --inception-weights /shared/weights-inception-2015-12-05-6726825d.pth --gpus-per-worker 1

``--out`` must be on storage every worker can read: the scorers load ``OUT/classifier/`` from there.
"""

import sys

from rgm_ray.cli.main import main

if __name__ == "__main__":
    sys.exit(main(["weigh", *sys.argv[1:]]))
