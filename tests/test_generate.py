import json
import os
import signal

import numpy as np
import pytest
import torch

from rgm_ray.cli.main import main
from rgm_ray.generate import GenerateSpec, PlanMismatchError, generate_sample_set, make_plan
from rgm_ray.runtime import ClusterOptions
from rgm_ray.models.checkpoint import load_checkpoint, save_checkpoint
from rgm_ray.models.pixelcnnpp import PixelCNNpp, PixelCNNppConfig
from rgm_ray.models.registry import family_for_kind
from rgm_ray.models.vae import VAE, VAEConfig
from rgm_ray.store import MANIFEST_NAME, SampleSet, verify_sample_set

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def vae_ckpt(tmp_path_factory):
    torch.manual_seed(0)
    return save_checkpoint(tmp_path_factory.mktemp("vae") / "ckpt",
                           VAE(VAEConfig(in_channels=1, image_size=28, latent_dim=4, base_channels=4)))


@pytest.fixture(scope="module")
def pixelcnn_ckpt(tmp_path_factory):
    torch.manual_seed(0)
    config = PixelCNNppConfig(in_channels=1, image_size=8, nr_resnet=1, nr_filters=8, nr_logistic_mix=2,
                              dropout=0.0)
    return save_checkpoint(tmp_path_factory.mktemp("pcnn") / "ckpt", PixelCNNpp(config))


def _hashes(path):
    return {s["file"]: s["sha256"] for s in json.loads((path / MANIFEST_NAME).read_text())["shards"]}


def _run(ckpt, out, workers, **kw):
    spec = GenerateSpec(str(ckpt), str(out), num_samples=kw.pop("n", 100), shard_size=kw.pop("shard_size", 16),
                        seed=kw.pop("seed", 7), sampler=kw.pop("sampler", None), batch_size=kw.pop("batch", 8))
    return generate_sample_set(spec, ClusterOptions(workers=workers), **kw).to_dict() | {"message": ""}


def test_bytes_do_not_depend_on_worker_count(ray_local, vae_ckpt, tmp_path):
    one = _run(vae_ckpt, tmp_path / "w1", 1)
    two = _run(vae_ckpt, tmp_path / "w2", 2, batch=5)
    assert one["num_samples"] == two["num_samples"] == 100 and two["workers"] == 2
    assert _hashes(tmp_path / "w1") == _hashes(tmp_path / "w2")
    assert len(_hashes(tmp_path / "w1")) == 7  # ceil(100 / 16), the last shard ragged
    data = SampleSet(tmp_path / "w2").read()
    np.testing.assert_array_equal(data["sample_id"], np.arange(100))
    assert (data["label"] == -1).all()
    assert verify_sample_set(tmp_path / "w2") == []


def test_resume_regenerates_only_damaged_shards(ray_local, vae_ckpt, tmp_path):
    out = tmp_path / "set"
    _run(vae_ckpt, out, 2)
    original = _hashes(out)
    (out / "shard-00001.parquet").unlink()
    shard = out / "shard-00003.parquet"
    shard.write_bytes(shard.read_bytes()[:200])
    again = _run(vae_ckpt, out, 2)
    assert again["generated_shards"] == 2 and again["reused_shards"] == 5
    assert _hashes(out) == original
    assert verify_sample_set(out) == []
    spec = GenerateSpec(str(vae_ckpt), str(out), num_samples=100, shard_size=16, seed=7, batch_size=8)
    complete = generate_sample_set(spec, ClusterOptions(workers=2))
    assert complete.generated_shards == 0 and "already complete" in complete.message


def test_other_settings_are_refused_unless_overwrite(ray_local, vae_ckpt, tmp_path):
    out = tmp_path / "set"
    _run(vae_ckpt, out, 1, n=32)
    with pytest.raises(PlanMismatchError, match=r"seed: 7 -> 8"):
        _run(vae_ckpt, out, 1, n=32, seed=8)
    with pytest.raises(PlanMismatchError, match="num_samples"):
        _run(vae_ckpt, out, 1, n=48)
    replaced = _run(vae_ckpt, out, 1, n=32, seed=8, overwrite=True)
    assert replaced["generated_shards"] == 2
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("mine")
    with pytest.raises(PlanMismatchError, match="not empty"):
        _run(vae_ckpt, tmp_path / "foreign", 1, n=32)
    with pytest.raises(PlanMismatchError, match="not written by 'rgm generate'"):
        _run(vae_ckpt, tmp_path / "foreign", 1, n=32, overwrite=True)  # --overwrite never deletes foreign files
    assert (tmp_path / "foreign" / "notes.txt").read_text() == "mine"


def test_killed_worker_loses_only_its_inflight_shard(ray_local, pixelcnn_ckpt, tmp_path):
    killed = []

    def kill_a_busy_worker(index, context):
        if not killed and context["inflight"]:
            worker = next(iter(context["inflight"]))
            os.kill(context["pids"][worker], signal.SIGKILL)  # mid-shard: it is in flight
            killed.append(context["inflight"][worker])

    out = tmp_path / "set"
    summary = _run(pixelcnn_ckpt, out, 2, n=48, shard_size=6, batch=6, sampler="naive",
                   on_shard_done=kill_a_busy_worker)
    assert killed and summary["worker_restarts"] + summary["retried_shards"] + summary["backup_shards"] >= 1
    assert verify_sample_set(out) == []
    data = SampleSet(out).read()
    np.testing.assert_array_equal(np.sort(data["sample_id"]), np.arange(48))
    # the re-drawn shard has exactly the bytes an undisturbed draw gives
    shard = killed[0]
    model = load_checkpoint(pixelcnn_ckpt)
    plan = make_plan(pixelcnn_ckpt, num_samples=48, shard_size=6, seed=7, sampler="naive")
    expected = family_for_kind(model.kind).draw(model, 6, seed=plan.shard_seed(shard), batch_size=6, sampler="naive")
    np.testing.assert_array_equal(data["image"][shard * 6:(shard + 1) * 6], expected)


def test_ray_data_reads_the_set(ray_local, vae_ckpt, tmp_path):
    out = tmp_path / "set"
    _run(vae_ckpt, out, 1, n=40)
    ds = ray_local.data.read_parquet(str(out))
    assert ds.count() == 40
    assert sorted(ds.to_pandas()["sample_id"].tolist()) == list(range(40))


def test_cli_generate_and_pipeline_entrypoint(ray_local, vae_ckpt, tmp_path, capsys):
    out = tmp_path / "cli"
    assert main(["generate", "--checkpoint", str(vae_ckpt), "--num-samples", "20", "--shard-size", "8",
                 "--out", str(out), "--no-mlflow", "--json", "--workers", "1"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["num_samples"] == 20 and summary["shards"] == 3
    assert main(["generate", "--checkpoint", str(vae_ckpt), "--num-samples", "20", "--shard-size", "8",
                 "--out", str(out), "--no-mlflow", "--sampler", "cached"]) == 2
    assert "does not fit a vae" in capsys.readouterr().err
    import pipelines.generate  # the Ray-job entrypoint imports cleanly

    assert pipelines.generate.main is main
