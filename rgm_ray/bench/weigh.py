"""Ray Data scoring against a plain torch loop over the same images (``rgm bench weigh``).

The weigh stage's second pass maps the fitted weigher over the sample set with Ray Data
(:func:`rgm_ray.weigh.scoring.score_sample_set`). Its cost beside the model's own work is Ray
Data's: reading Parquet in tasks, moving blocks through the object store, the actor pool. The
baseline is what one process would do: read the shards in order and call the same scorer
(:class:`~rgm_ray.weigh.scoring.LogWeightScorer`: decode, backbone, heads) batch by batch, with as
many torch threads in total as the pool's scorers hold. Both passes must give the same log-weights.

Without ``--weigher``/``--samples`` the benchmark builds its inputs in a temporary directory: a
quick domain network, a set of real train images standing in for generated ones, and a weigh run
(its fitting is not timed). Wall times: the machine may be shared, so its load average is reported.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from rgm_ray.bench.machine import machine_info
from rgm_ray.runtime import ClusterOptions, init_ray, set_torch_threads, worker_count
from rgm_ray.store import IMAGE, SAMPLE_ID, SampleSet
from rgm_ray.weigh.scoring import LogWeightScorer, ScoringOptions, score_sample_set

DATASET = "fashion-mnist"
FIRST_UNSEEN = 30_000  # train rows from here on stand in for generated images (the quick domain net sees 1024)


def build_inputs(root: Path, num_images: int, *, seed: int = 0) -> tuple[Path, Path]:
    """A weigher fitted on ``num_images`` train images vs the rest of the train split: (weigher dir, samples)."""
    from rgm_ray.data import load_dataset
    from rgm_ray.models.domain import DomainConfig, ensure_domain
    from rgm_ray.store.export import export_dataset
    from rgm_ray.weigh.classifier import HeadConfig
    from rgm_ray.weigh.stage import CLASSIFIER_DIR, WeighConfig, WeighSpec, weigh

    train = load_dataset(DATASET, "train")
    if not 0 < num_images <= len(train.images) - FIRST_UNSEEN:
        raise ValueError(f"--num-images must be in 1..{len(train.images) - FIRST_UNSEEN}, got {num_images}")
    part = slice(FIRST_UNSEEN, FIRST_UNSEEN + num_images)
    samples = root / "samples"
    export_dataset(replace(train, images=train.images[part], labels=train.labels[part]), samples, shard_size=500)
    domain = root / "domain"
    ensure_domain(DATASET, domain, DomainConfig(epochs=1, batch_size=64, train_images=1024, test_images=500))
    spec = WeighSpec(real=DATASET, samples=str(samples), out=str(root / "weighed"),
                     config=WeighConfig(domain_checkpoint=str(domain), head=HeadConfig(epochs=2), seed=seed))
    weigh(spec)
    return root / "weighed" / CLASSIFIER_DIR, samples


def plain_loop(samples: SampleSet, weigher_dir: Path, *, threads: int, batch_size: int) -> tuple[float, np.ndarray]:
    """(seconds, log-weights sorted by sample_id) of one process scoring the shards in order."""
    set_torch_threads(threads)
    started = time.perf_counter()
    scorer = LogWeightScorer(str(weigher_dir), threads=threads, device="cpu")
    ids, weights = [], []
    for table in samples.iter_tables([SAMPLE_ID, IMAGE]):
        for start in range(0, table.num_rows, batch_size):
            rows = table.slice(start, batch_size)
            out = scorer({SAMPLE_ID: rows[SAMPLE_ID].to_numpy(),
                          IMAGE: np.asarray(rows[IMAGE].to_pylist(), dtype=object)})
            ids.append(out[SAMPLE_ID])
            weights.append(out["log_weight"])
    seconds = time.perf_counter() - started
    ids_all, weights_all = np.concatenate(ids), np.concatenate(weights)
    return seconds, weights_all[np.argsort(ids_all, kind="stable")]


def bench_weigh(*, weigher: str | None = None, samples: str | None = None, num_images: int = 6000,
                batch_size: int = 256, cluster: ClusterOptions = ClusterOptions(cpus_per_worker=0.5),
                repeats: int = 2) -> dict[str, Any]:
    """Images per second of both passes (best of ``repeats``), their ratio and the largest log-weight gap."""
    import ray

    with tempfile.TemporaryDirectory(prefix="rgm-bench-weigh-") as tmp:
        if (weigher is None) != (samples is None):
            raise ValueError("give both --weigher and --samples, or neither (the benchmark then builds them)")
        weigher_dir, samples_dir = (Path(weigher), Path(samples)) if weigher else build_inputs(Path(tmp), num_images)
        sample_set = SampleSet(samples_dir)
        n = len(sample_set)
        init_ray(cluster.address)
        workers = worker_count(cluster, ray.cluster_resources(), reserve_cpu=True,
                               node_cpus=[node["Resources"].get("CPU", 0.0) for node in ray.nodes() if node["Alive"]])
        threads = workers * cluster.threads
        options = ScoringOptions(batch_size=batch_size)
        ray_seconds, loop_seconds = [], []
        for _ in range(repeats):  # the first Ray pass also starts the pool's worker processes
            scores = score_sample_set(sample_set, str(weigher_dir), cluster, options)
            ray_seconds.append(scores.seconds)
            seconds, loop_weights = plain_loop(sample_set, weigher_dir, threads=threads, batch_size=batch_size)
            loop_seconds.append(seconds)
    ray_rate, loop_rate = n / min(ray_seconds), n / min(loop_seconds)
    return {"images": n, "batch_size": batch_size, "scorers": workers, "threads_per_scorer": cluster.threads,
            "plain_loop_threads": threads, "ray_data_seconds": ray_seconds, "plain_loop_seconds": loop_seconds,
            "ray_data_images_per_sec": ray_rate, "plain_loop_images_per_sec": loop_rate,
            "ray_over_loop": ray_rate / loop_rate,
            "max_abs_log_weight_diff": float(np.max(np.abs(scores.log_weights - loop_weights))),
            "method": "best of the repeats; Ray Data: score_sample_set's iteration (read, repartition, actor pool); "
                      "plain loop: the same scorer over the shards in one process, with the pool's total threads",
            "machine": machine_info()}
