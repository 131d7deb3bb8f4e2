"""Issue 19, node loss: a worker node of a multi-node cluster removed in the middle of generate, weigh (Ray
Data scoring) and resample; each stage completes with the bytes of an undisturbed run.

One ``ray.cluster_utils.Cluster`` for the module: a 1-CPU head (the driver's node, never removed) and two
1-CPU worker nodes, all raylets on this machine. A test removes a worker node hosting a busy worker
from a stage's own progress hook (so the point is a count, not a time) and adds a fresh node back at the
end for the next test. The cluster is full: a removed node's actors cannot restart anywhere.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

import fault_driver as fd
from rgm_ray.generate import GenerateSpec, generate_sample_set
from rgm_ray.resample import ResampleConfig, ResampleSpec, resample_sample_set
from rgm_ray.runtime import ClusterOptions
from rgm_ray.store import verify_sample_set
from rgm_ray.weigh import HeadConfig, ScoringOptions, WeighConfig, WeighSpec, weigh
from rgm_ray.weigh import is_complete as weigh_complete

pytestmark = [pytest.mark.ray, pytest.mark.faults, pytest.mark.timeout(180)]


@pytest.fixture(scope="module")
def cluster():
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    for _ in range(2):
        cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    yield cluster
    ray.shutdown()
    cluster.shutdown()


@pytest.fixture
def options(cluster):
    """This test's cluster options; afterwards the cluster gets back its two worker nodes."""
    yield ClusterOptions(address=cluster.address)
    while len(cluster.list_all_nodes()) < 3:
        cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()


def _parent(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat[stat.rindex(")") + 2:].split()[1])


def _worker_node_of(cluster, pid: int):
    """The worker node (not the head) whose raylet started process ``pid``, or None."""
    raylets = {node.all_processes["raylet"][0].process.pid: node for node in cluster.list_all_nodes()
               if node is not cluster.head_node}
    while pid > 1:
        if pid in raylets:
            return raylets[pid]
        try:
            pid = _parent(pid)
        except (OSError, ValueError):
            return None
    return None


def _worker_node_running(cluster, process_name: str):
    """A worker node one of whose processes is named ``process_name`` (``/proc`` names: 15 characters)."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                name = (entry / "comm").read_text().strip()
            except OSError:
                continue
            if name.startswith(process_name[:15]):
                node = _worker_node_of(cluster, int(entry.name))
                if node is not None:
                    return node
    return None


def _move_aside(out: Path) -> Path:
    shutil.move(out, out.with_name("reference"))
    return out.with_name("reference")


def test_generate_survives_losing_a_node_with_a_busy_worker(cluster, options, tmp_path):
    """The lost worker's actor cannot restart (no CPU left anywhere): its shard is drawn again by another."""
    spec = GenerateSpec(generator="rgm_ray.generate.example_plugin:make", generator_args={"size": 16},
                        out=str(tmp_path / "out"), num_samples=160, shard_size=16, seed=3)
    generate_sample_set(spec, options)
    reference = fd.fingerprint(_move_aside(tmp_path / "out"))
    removed = []

    def remove_a_busy_workers_node(index, context):
        for worker in context["inflight"]:
            node = None if removed else _worker_node_of(cluster, context["pids"][worker])
            if node is not None:
                cluster.remove_node(node)
                removed.append(context["inflight"][worker])

    result = generate_sample_set(spec, options, on_shard_done=remove_a_busy_workers_node)
    assert removed and result.workers == 3  # a node with a shard in flight went, and with it a third of the pool
    assert verify_sample_set(spec.out) == [] and fd.fingerprint(spec.out) == reference


@pytest.fixture(scope="module")
def weigh_inputs(tmp_path_factory, fmnist_test):
    """Real test images as 'real' and a darkened copy as 'generated', 4 shards each."""
    return fd.write_weigh_inputs(tmp_path_factory.mktemp("weigh_inputs"), fmnist_test.images)


class _RemoveNodeAt:
    """A progress-bar factory (the stages' ``progress`` hook) that removes a worker node at the first update
    of the bar ``desc``: one running a process named ``process_name`` if there is one, else, unless
    ``busy_only``, any. ``removed`` records which kind went."""

    def __init__(self, cluster, desc: str, process_name: str, *, busy_only: bool = True) -> None:
        self.cluster, self.desc, self.process_name, self.busy_only = cluster, desc, process_name, busy_only
        self.removed: str | None = None

    def __call__(self, *, desc: str = "", **_):
        return _Bar(self if desc == self.desc and not self.removed else None)


class _Bar:
    def __init__(self, trigger: _RemoveNodeAt | None) -> None:
        self.trigger = trigger

    def update(self, n: int = 1) -> None:
        trigger = self.trigger
        if trigger is not None and not trigger.removed:
            node = _worker_node_running(trigger.cluster, trigger.process_name)
            trigger.removed = "busy" if node is not None else None
            if node is None and not trigger.busy_only:
                node, trigger.removed = trigger.cluster.list_all_nodes()[-1], "idle"
            if node is not None:
                trigger.cluster.remove_node(node)

    def close(self) -> None:
        pass


@pytest.mark.faults_long  # two Ray Data passes on three nodes: about a minute on 2 cores
def test_weigh_survives_losing_a_node_with_a_scorer(cluster, options, weigh_inputs, tmp_path):
    spec = WeighSpec(real=str(weigh_inputs / "real"), samples=str(weigh_inputs / "gen"), out=str(tmp_path / "out"),
                     config=WeighConfig(backbone="cnn", head=HeadConfig(epochs=1)),
                     scoring=ScoringOptions(batch_size=16))
    scoring = ClusterOptions(cpus_per_worker=0.5, address=options.address)
    weigh(spec, scoring)
    reference = fd.fingerprint(_move_aside(tmp_path / "out"))
    trigger = _RemoveNodeAt(cluster, "score", "ray::MapWorker")
    weigh(spec, scoring, progress=trigger)
    assert trigger.removed == "busy", "no scorer ran on a worker node"
    assert weigh_complete(spec.out) and fd.fingerprint(spec.out) == reference


def test_resample_survives_losing_a_node_while_checking_shards(cluster, options, tmp_path):
    path = tmp_path / "weighted"
    fd.write_weighted_set(path, shards=6, side=8, seed=5)
    spec = ResampleSpec(str(path), str(tmp_path / "out"), ResampleConfig(k=300, target_ess=200.0, shard_size=100))
    resample_sample_set(spec, options)
    reference = fd.fingerprint(_move_aside(tmp_path / "out"))
    trigger = _RemoveNodeAt(cluster, "resample: check", "ray::check_shard", busy_only=False)
    resample_sample_set(spec, options, progress=trigger)
    print(f"removed a worker node ({trigger.removed}) while the shards were checked")
    assert trigger.removed and fd.fingerprint(spec.out) == reference


@pytest.mark.parametrize("nodes, per_actor, expected", [
    ([1, 1, 1], 0.5, 2),  # 3 actors could take half of each node: then no read task runs anywhere
    ([2, 2], 0.5, 5),  # 6 would fit the reserve, spread 3 + 3 they leave two half CPUs
    ([8, 8], 0.5, 29),  # 30 would fit the reserve, spread 15 + 15 they leave two half CPUs
    ([2], 0.5, 2),  # one node: the reserve alone, as before
])
def test_scoring_pool_leaves_a_whole_cpu_on_some_node(nodes, per_actor, expected):
    """Ray spreads actors over nodes, so the CPU kept for Ray Data's read tasks must be whole on one of them."""
    from rgm_ray.runtime import worker_count

    cluster = ClusterOptions(cpus_per_worker=per_actor)
    assert worker_count(cluster, {"CPU": float(sum(nodes))}, reserve_cpu=True, node_cpus=nodes) == expected
    with pytest.raises(ValueError, match="hangs"):
        worker_count(ClusterOptions(workers=expected + 1, cpus_per_worker=per_actor), {"CPU": float(sum(nodes))},
                     reserve_cpu=True, node_cpus=nodes)
