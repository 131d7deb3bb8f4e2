"""Fixed costs of one sweep trial and its per-step training time (``rgm bench ssl``).

One cell of a sweep config is run twice in a Ray actor holding one CPU and one torch thread, as
Tune runs a trial, the same way a trial does (``tune.sweep``): MLflow run, data from the object
store (:class:`SweepData`), ``run_ssl`` writing ``metrics.json``. The first call is a trial in a new
actor (worker start, imports, optimiser warm-up); the second a trial in a reused actor, which is
how a sweep runs every trial after the first on each worker. Reading the data from disk, as every
trial did before the sweep shared it, is timed beside each (``data_from_disk_seconds``).

Wall times: the machine may be shared, so its load average is reported with them.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable

from rgm_ray.bench.machine import machine_info
from rgm_ray.runtime import init_ray, set_torch_threads
from rgm_ray.ssl.sources import parse_source
from rgm_ray.ssl.stage import load_ssl_data, run_ssl, ssl_data
from rgm_ray.tracking import RunLink, start_run
from rgm_ray.tune.config import load_sweep_config
from rgm_ray.tune.sweep import SweepData, read_inputs

EXPERIMENT = "bench_ssl"
METHOD = {
    "startup_seconds": "the trial asked for (actor created, or its next call sent) -> the trial code runs",
    "mlflow_setup_seconds": "import MLflow and open the trial's run (start_run with a RunLink), as a trial does",
    "data_seconds": "map the shared data from the object store and cut this run's splits (ssl_data)",
    "data_from_disk_seconds": "read the real splits and the source from disk instead (load_ssl_data), "
                              "what every trial paid before the sweep shared its data; timed after the run",
    "first_step_seconds": "run_ssl called -> first training step done (model, optimiser, first step)",
    "per_step_seconds": "mean time of the training steps after the first",
    "evaluation_seconds": "last step done -> epoch reported: validation and test evaluation",
    "startup_to_first_step_seconds": "the trial asked for -> first training step done",
    "fixed_seconds": "the trial's wall time minus steps x per_step_seconds: what a trial costs besides training",
}


class _StepClock:
    """``train_ssl``'s progress bar and epoch callback, recording when each step and epoch ends."""

    def __init__(self) -> None:
        self.steps: list[float] = []
        self.epochs: list[float] = []

    def __call__(self, **_: Any) -> "_StepClock":
        return self

    def update(self, _n: int) -> None:
        self.steps.append(time.perf_counter())

    def set_postfix(self, *_: Any) -> None:
        pass

    def close(self) -> None:
        pass

    def epoch_end(self, _record: dict[str, float]) -> None:
        self.epochs.append(time.perf_counter())


class TrialProbe:
    """Runs one cell as a sweep trial would, timing each phase (a Ray actor: one per bench)."""

    def run(self, shared: list[Any], dataset: str, root: str | None, source: str, name: str,
            ssl_config: dict[str, Any], link: RunLink | None, asked_at: float) -> dict[str, Any]:
        """``shared`` wraps the :class:`SweepData` ref so that fetching it is timed here, not by Ray."""
        import ray

        from rgm_ray.ssl.trainer import SSLConfig

        entered = time.time()
        started = time.perf_counter()
        config = SSLConfig.from_dict(ssl_config)
        spec = parse_source(source)
        set_torch_threads(1)
        with start_run(name, enabled=link is not None, link=link, params={"source": name}) as tracker:
            mlflow_done = time.perf_counter()
            data: SweepData = ray.get(shared[0])
            run_data = ssl_data(data.train, data.test, spec, config, data.pools.get(name))
            data_done = time.perf_counter()
            clock = _StepClock()
            with tempfile.TemporaryDirectory(prefix="rgm-bench-ssl-") as out:
                run_ssl(dataset, spec, config, source_name=name, out=out, tracker=tracker, progress=clock,
                        on_epoch=clock.epoch_end, data=run_data)
        finished = time.perf_counter()
        load_ssl_data(dataset, spec, config, root=root)
        disk_done = time.perf_counter()
        steps = len(clock.steps)
        per_step = (clock.steps[-1] - clock.steps[0]) / (steps - 1)  # bench_ssl asks for >= 2 steps
        trial = entered - asked_at + finished - started
        return {"startup_seconds": entered - asked_at,
                "mlflow_setup_seconds": mlflow_done - started if link is not None else None,
                "data_seconds": data_done - mlflow_done, "data_from_disk_seconds": disk_done - finished,
                "first_step_seconds": clock.steps[0] - data_done, "per_step_seconds": per_step, "steps": steps,
                "evaluation_seconds": clock.epochs[-1] - clock.steps[-1],
                "startup_to_first_step_seconds": entered - asked_at + clock.steps[0] - started,
                "trial_seconds": trial, "fixed_seconds": trial - steps * per_step,
                "pid": os.getpid(), "load_average_1m": os.getloadavg()[0]}


def _experiment(directory: Path) -> RunLink:
    """A throwaway store in ``directory`` and the experiment the probe's runs go to (top-level runs)."""
    from mlflow.tracking import MlflowClient

    tracking_uri = f"sqlite:///{directory / 'mlflow.db'}"
    experiment_id = MlflowClient(tracking_uri).create_experiment(
        EXPERIMENT, artifact_location=(directory / "artifacts").as_uri())
    return RunLink(tracking_uri, experiment_id, experiment_name=EXPERIMENT)


def bench_ssl(config_path: str | Path, overrides: Iterable[str] = (), *, source: str = "real", steps: int = 30,
              track: bool = True) -> dict[str, Any]:
    """Time the first cell of ``config_path`` with unlabelled source ``source`` (a name in its
    ``sources``), ``steps`` training steps (one epoch), in a new and then a reused actor."""
    import ray

    if steps < 2:
        raise ValueError(f"steps must be >= 2 (the per-step time is measured after the first), got {steps}")
    config = load_sweep_config(config_path, [*overrides, f"grid.source=[{source}]", "baselines=[]",
                                             "compare_to=null", "scheduler=null", "train.epochs=1",
                                             f"train.steps_per_epoch={steps}"])
    cell = config.cells()[0]
    started = time.perf_counter()
    sources, data = read_inputs(config)
    read_seconds = time.perf_counter() - started
    started = time.perf_counter()
    init_ray()
    ray_seconds = time.perf_counter() - started
    started = time.perf_counter()
    shared = ray.put(data)
    put_seconds = time.perf_counter() - started
    result: dict[str, Any] = {
        "benchmark": "ssl_trial", "method": METHOD, "config": str(config_path), "cell": cell,
        "ssl_config": config.ssl_config(cell).to_dict(), "source": sources[source], "mlflow": track,
        "driver": {"read_inputs_seconds": read_seconds, "ray_init_seconds": ray_seconds,
                   "object_store_put_seconds": put_seconds,
                   "shared_image_bytes": sum(h.images.nbytes for h in (data.train, data.test, *data.pools.values()))},
        "machine": machine_info()}
    del data
    with tempfile.TemporaryDirectory(prefix="rgm-bench-ssl-mlflow-") as tmp:
        link = _experiment(Path(tmp)) if track else None
        root = str(Path(config.root).expanduser().resolve()) if config.root else None  # the actor's cwd may differ
        args = (config.dataset, root, sources[source], source, config.ssl_config(cell).to_dict(), link)
        asked_at = time.time()
        probe = ray.remote(num_cpus=1)(TrialProbe).remote()
        try:
            for key in ("new_actor", "reused_actor"):
                result[key] = ray.get(probe.run.remote([shared], *args, asked_at))
                asked_at = time.time()
        finally:
            ray.kill(probe)
    return result
