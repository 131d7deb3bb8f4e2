"""The pipeline's MLflow history across attempts: close what a killed attempt left open, link what it finished.

A pipeline run directory is locked while a pipeline runs in it, so once the new attempt holds the lock,
every run still RUNNING that is tagged with this run directory (the parent, its stage runs and the
Tune trials, which all inherit ``rgm.out``) belongs to an attempt that was killed without closing
it (SIGKILL, a lost node): :func:`close_stale_runs` ends them KILLED.

A stage skipped because its output is complete gets no empty run: :func:`link_reused_stage` adds a
child run under the new parent that names the earlier stage run holding the numbers (tag
``rgm.reused_run_id``; its artefacts stay there) and carries a copy of its params and latest metrics,
so the new parent's tree shows every stage with its numbers (system metrics are not copied).
"""

from __future__ import annotations

import time
from typing import Any, Iterator

from rgm_ray.tracking import TAG_NOTE, TAG_OUT, TAG_PARENT, RunLink

TAG_STAGE = "rgm.stage"
TAG_REUSED = "rgm.reused_run_id"
TAG_CLOSED_BY = "rgm.closed_by_run_id"
SYSTEM_METRICS = "system/"  # MLflow's prefix for system metrics
_PAGE = 1000


def _client(link: RunLink) -> Any:
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=link.tracking_uri)


def _runs(link: RunLink, filter_string: str, order_by: list[str] | None = None) -> Iterator[Any]:
    """Runs of the link's experiment matching ``filter_string`` and tagged with its run directory."""
    if link.tags.get(TAG_OUT) is None:  # no run directory to match: touch nothing (other tools' runs)
        return
    client = _client(link)
    token = None
    while True:
        page = client.search_runs([link.experiment_id], filter_string, max_results=_PAGE, order_by=order_by,
                                  page_token=token)
        # the directory is compared here, not in the filter: a path may hold quotes the filter grammar cannot
        yield from (run for run in page if run.data.tags.get(TAG_OUT) == link.tags.get(TAG_OUT))
        token = page.token
        if not token:
            return


def close_stale_runs(link: RunLink) -> int:
    """End KILLED every RUNNING run of this run directory but the link's own (the new parent); returns how many."""
    client = _client(link)
    stale = [run.info.run_id for run in _runs(link, "attributes.status = 'RUNNING'")
             if run.info.run_id != link.parent_run_id]
    for run_id in stale:
        client.set_tag(run_id, TAG_CLOSED_BY, link.parent_run_id)
        client.set_terminated(run_id, status="KILLED")
    return len(stale)


def link_reused_stage(link: RunLink, stage: str) -> str | None:
    """Under the link's parent, a finished child run for the complete stage ``stage`` pointing at the
    newest earlier run of it in this run directory (and copying its params and latest metrics);
    None, and no run, when there is none (e.g. it ran with ``--no-mlflow``). Returns the earlier run's id."""
    from mlflow.entities import Metric, Param

    earlier = next((run for run in _runs(link, f"tags.`{TAG_STAGE}` = '{stage}' and attributes.status = 'FINISHED'",
                                          order_by=["attributes.end_time DESC"])
                    if run.data.tags.get(TAG_PARENT) != link.parent_run_id), None)
    if earlier is None:
        return None
    source = earlier.data.tags.get(TAG_REUSED, earlier.info.run_id)  # a copy points at the original
    client = _client(link)
    tags = {**link.tags, TAG_STAGE: stage, TAG_REUSED: source, TAG_PARENT: link.parent_run_id,
            TAG_NOTE: f"Complete in an earlier attempt: params and metrics copied from run {source}, "
                      "which holds its artefacts, models and full metric history."}
    run = client.create_run(link.experiment_id, run_name=stage, tags=tags)
    now = int(time.time() * 1000)
    params = [Param(key, value) for key, value in earlier.data.params.items()]
    metrics = [Metric(key, value, now, 0) for key, value in earlier.data.metrics.items()
               if not key.startswith(SYSTEM_METRICS)]  # the machine's load then, not the stage's numbers
    for start in range(0, max(len(params), len(metrics)), 100):  # MLflow takes at most 100 params per batch
        client.log_batch(run.info.run_id, metrics=metrics[start:start + 100], params=params[start:start + 100])
    client.set_terminated(run.info.run_id, status="FINISHED")
    return source
