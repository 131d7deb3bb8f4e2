"""Ray job: a semi-supervised sweep (Ray Tune, one MLflow run per trial) on the job's cluster.

    ray job submit --working-dir . -- python -m pipelines.tune \
        --config tune_configs/ssl_sweep.yaml --out /shared/rgm/runs/paper/ssl_sweep \
        --set sources.plain=/shared/rgm/runs/paper/samples/pixelcnn \
        --set sources.resampled=/shared/rgm/runs/paper/resampled/pixelcnn \
        --set sources.weighted=weighted:/shared/rgm/runs/paper/weights/pixelcnn/weighted \
        --set tracking_uri=sqlite:////shared/rgm/mlflow.db --set resources_per_trial.gpu=0.25

``--out``, the sample sets and the tracking store must be reachable from every node.
"""

import sys

from rgm_ray.cli.main import main

if __name__ == "__main__":
    sys.exit(main(["tune", *sys.argv[1:]]))
