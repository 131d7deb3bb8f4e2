"""Generator plugins run on the generation actors with the built-in models' guarantees."""

import json
import os
import shutil
import signal

import numpy as np
import pytest

from rgm_ray.cli.main import main
from rgm_ray.generate import GenerateSpec, PlanMismatchError, PluginError, generate_sample_set, runner
from rgm_ray.generate import example_plugin
from rgm_ray.generate.plugins import Plugin, parse_generator_args
from rgm_ray.generate.workers import ShardSampler
from rgm_ray.runtime import ClusterOptions
from rgm_ray.store import MANIFEST_NAME, SampleSet, verify_sample_set
from rgm_ray.store.layout import PLAN_FILE

pytestmark = pytest.mark.ray

EXAMPLE = "rgm_ray.generate.example_plugin:make"
NOT_CALLABLE = 42


class _Images:
    """A test plugin whose output ``make_images(n, rng)`` decides; it declares the shape (1, 8, 8)."""

    shape = (1, 8, 8)

    def __init__(self, make_images):
        self.make_images = make_images

    def sample(self, n, seed):
        return self.make_images(n, np.random.default_rng(seed))


def float_output():
    return _Images(lambda n, rng: rng.random((n, 1, 8, 8), dtype=np.float32))


def wrong_shape():
    return _Images(lambda n, rng: rng.integers(0, 256, (n, 1, 8, 9), dtype=np.uint8))


def unseeded():
    return _Images(lambda n, rng: np.random.default_rng().integers(0, 256, (n, 1, 8, 8), dtype=np.uint8))


def at_most_four():  # passes the driver's two-image probe, breaks the protocol on a real shard
    return _Images(lambda n, rng: rng.integers(0, 256, (min(n, 4), 1, 8, 8), dtype=np.uint8))


ARGS = {"size": 32, "latent": 64}  # shards of 256 take long enough to kill a worker in the middle of one


def _spec(out, *, args=ARGS, n=1500, shard_size=256, seed=7, generator=EXAMPLE):
    return GenerateSpec(generator=generator, generator_args=args, out=str(out), num_samples=n,
                        shard_size=shard_size, seed=seed)


def _run(out, workers, *, overwrite=False, on_shard_done=None, **settings):
    return generate_sample_set(_spec(out, **settings), ClusterOptions(workers=workers), overwrite=overwrite,
                               on_shard_done=on_shard_done)


def _hashes(path):
    return {s["file"]: s["sha256"] for s in json.loads((path / MANIFEST_NAME).read_text())["shards"]}


@pytest.fixture(scope="module")
def one_worker_set(ray_local, tmp_path_factory):
    out = tmp_path_factory.mktemp("plugin") / "w1"
    assert _run(out, 1).workers == 1
    return out


def _copy(source, tmp_path):
    shutil.copytree(source, tmp_path / "set")
    return tmp_path / "set"


def test_two_workers_give_the_bytes_of_one(one_worker_set, tmp_path):
    two = _run(tmp_path / "w2", 2)
    assert two.workers == 2 and two.num_samples == 1500
    assert len(_hashes(one_worker_set)) == 6 and _hashes(one_worker_set) == _hashes(tmp_path / "w2")
    assert verify_sample_set(tmp_path / "w2") == []
    data = SampleSet(tmp_path / "w2").read()
    np.testing.assert_array_equal(data["sample_id"], np.arange(1500))
    plan = _spec(tmp_path / "w2").plan()
    expected = example_plugin.make(**ARGS).sample(220, plan.shard_seed(5)).numpy()
    np.testing.assert_array_equal(data["image"][1280:], expected)  # shard i = sample(len, shard_seed(i))
    recorded = json.loads((tmp_path / "w2" / PLAN_FILE).read_text())
    assert recorded == plan.to_dict()
    assert recorded["kind"] == recorded["sampler"] == "plugin" and recorded["generator"] == EXAMPLE
    assert recorded["generator_args"] == ARGS and recorded["image_shape"] == [1, 32, 32]


def test_resume_draws_only_the_missing_shard(one_worker_set, tmp_path):
    out = _copy(one_worker_set, tmp_path)
    (out / "shard-00002.parquet").unlink()
    again = _run(out, 2)
    assert again.generated_shards == 1 and again.reused_shards == 5 and _hashes(out) == _hashes(one_worker_set)
    assert _run(out, 2).generated_shards == 0 and runner.is_complete(_spec(out))


def test_a_killed_worker_changes_no_byte(one_worker_set, tmp_path):
    killed, finished = [], []

    def kill_the_busy_worker(index, context):  # at the 2nd shard the other worker has just begun one
        finished.append(index)
        if len(finished) == 2 and context["inflight"]:
            worker = next(iter(context["inflight"]))
            os.kill(context["pids"][worker], signal.SIGKILL)
            killed.append(context["inflight"][worker])

    disturbed = _run(tmp_path / "killed", 2, on_shard_done=kill_the_busy_worker)
    assert killed and (disturbed.metrics["worker_restarts"] + disturbed.metrics["retried_shards"]
                       + disturbed.metrics["backup_shards"]) >= 1
    assert verify_sample_set(tmp_path / "killed") == []
    assert _hashes(tmp_path / "killed") == _hashes(one_worker_set)


def test_changed_plugin_or_args_refused_unless_overwrite(one_worker_set, tmp_path, monkeypatch):
    out = _copy(one_worker_set, tmp_path)
    other = {**ARGS, "weights_seed": 1}
    with pytest.raises(PlanMismatchError, match=r"generator_args: \{'latent': 64, 'size': 32\} -> \{'latent': 64, "
                                                r"'size': 32, 'weights_seed': 1\}"):
        _run(out, 1, args=other)
    with monkeypatch.context() as patched:
        patched.setattr(example_plugin.TinyDeconvGenerator, "version", "tiny-deconv-2")
        with pytest.raises(PlanMismatchError, match="checkpoint_digest"):
            _run(out, 1)
    replaced = _run(out, 1, args=other, overwrite=True)
    assert replaced.generated_shards == 6 and verify_sample_set(out) == []
    assert not set(_hashes(out).values()) & set(_hashes(one_worker_set).values())
    assert json.loads((out / PLAN_FILE).read_text())["generator_args"] == other


@pytest.mark.parametrize("generator, message", [
    ("no_such_module_anywhere:make", r"cannot import 'no_such_module_anywhere' \(ModuleNotFoundError"),
    (f"{__name__}:NOT_CALLABLE", "'NOT_CALLABLE' is not a callable factory \\(it is a int\\)"),
    (f"{__name__}:missing", "has no attribute 'missing'"),
    ("rgm_ray.generate.example_plugin", "must look like package.module:factory"),
    (f"{__name__}:float_output", r"returned float32 \[2, 1, 8, 8\]; the protocol needs uint8 \[2, 1, 8, 8\]"),
    (f"{__name__}:wrong_shape", r"returned uint8 \[2, 1, 8, 9\]; the protocol needs uint8 \[2, 1, 8, 8\]"),
    (f"{__name__}:unseeded", "other images for the same"),
])
def test_bad_plugins_fail_on_the_driver_in_one_line(tmp_path, monkeypatch, generator, message):
    def no_actors(*args, **kwargs):
        raise AssertionError("actors started for a broken plugin")

    monkeypatch.setattr(runner, "_run_workers", no_actors)
    out = tmp_path / "set"
    with pytest.raises(PluginError, match=message) as caught:
        generate_sample_set(_spec(out, generator=generator, args=()), ClusterOptions(workers=1))
    assert "\n" not in str(caught.value) and repr(generator) in str(caught.value)
    assert not out.exists()


def test_a_bad_factory_argument_names_the_plugin():
    with pytest.raises(PluginError, match=r"factory\(size=30\) failed \(ValueError: size must be a positive multiple"):
        Plugin(EXAMPLE, {"size": 30})
    with pytest.raises(ValueError, match="given twice"):
        parse_generator_args(["size=28", "size=32"])
    assert parse_generator_args(["weights_seed=1", "size=28", "name=x", "flag=true"]) == (
        ("flag", True), ("name", "x"), ("size", 28), ("weights_seed", 1))
    with pytest.raises(ValueError, match="exactly one of checkpoint and generator"):
        GenerateSpec(out="x", num_samples=4)


def test_the_worker_checks_every_shard():
    plan = Plugin(f"{__name__}:at_most_four").plan(num_samples=16, shard_size=8, seed=0)
    with pytest.raises(PluginError, match=r"sample\(8, seed\) returned uint8 \[4, 1, 8, 8\]"):
        ShardSampler(plan, None, threads=1).draw_shard(plan, 0, batch_size=8)


def test_cli_generates_from_a_plugin(ray_local, tmp_path, capsys):
    out = tmp_path / "cli"
    argv = ["generate", "--generator", EXAMPLE, "--generator-arg", "size=28", "--num-samples", "20",
            "--shard-size", "8", "--out", str(out), "--no-mlflow", "--workers", "1"]
    assert main([*argv, "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["num_samples"] == 20 and summary["shards"] == 3 and verify_sample_set(out) == []
    assert main([*argv[:3], "--generator-arg", "size=32", *argv[5:]]) == 2
    assert "holds samples from another run" in capsys.readouterr().err
    assert main(["generate", "--generator", "nowhere_at_all:make", *argv[5:]]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "generator plugin 'nowhere_at_all:make': cannot import" in err
    with pytest.raises(SystemExit):
        main([*argv, "--checkpoint", str(tmp_path)])  # --checkpoint and --generator exclude each other
