"""Data safety of stage outputs: a replacement never costs the old artefact, and an output is finished
only when all of it is (issue 19, defects 1 and 2)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from rgm_ray.generate import GenerateSpec, generate_sample_set
from rgm_ray.generate import is_complete as generate_complete
from rgm_ray.models.checkpoint import save_checkpoint
from rgm_ray.models.vae import VAE, VAEConfig
from rgm_ray.runtime import ClusterOptions
from rgm_ray.store import MANIFEST_NAME, ArtefactExistsError, SampleSet, SampleSetWriter, make_table, verify_sample_set
from rgm_ray.store.completion import COMPLETE_FILE, completion_problem, mark_complete, stage_output
from rgm_ray.store.layout import PLAN_FILE
from rgm_ray.weigh import HeadConfig, WeighConfig, WeighSpec, weigh
from rgm_ray.weigh import is_complete as weigh_complete

pytestmark = pytest.mark.ray
ONE_WORKER = ClusterOptions(workers=1)


@pytest.fixture(scope="module")
def vae_ckpt(tmp_path_factory):
    torch.manual_seed(0)
    return save_checkpoint(tmp_path_factory.mktemp("vae") / "ckpt",
                           VAE(VAEConfig(in_channels=1, image_size=28, latent_dim=4, base_channels=4)))


def _hashes(path):
    return {s["file"]: s["sha256"] for s in json.loads((path / MANIFEST_NAME).read_text())["shards"]}


# --- the completion marker, without Ray ----------------------------------------------------------------


def test_marker_lists_artefacts_and_detects_changes(tmp_path):
    (tmp_path / "a.json").write_text("{}")
    assert completion_problem(tmp_path, "s") is not None
    mark_complete(tmp_path, "s", ["a.json"])
    assert completion_problem(tmp_path, "s") is None
    assert "not 'other'" in completion_problem(tmp_path, "other")
    (tmp_path / "a.json").write_text('{"changed": 1}')
    assert "changed" in completion_problem(tmp_path, "s")
    (tmp_path / "a.json").unlink()
    assert "missing" in completion_problem(tmp_path, "s")
    with pytest.raises(FileNotFoundError, match="missing b.json"):
        mark_complete(tmp_path, "s", ["b.json"])


def test_stage_output_keeps_the_old_output_when_a_replacement_fails(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "a.json").write_text("old")
    mark_complete(out, "s", ["a.json"])
    with pytest.raises(ArtefactExistsError, match="--overwrite"):
        with stage_output(out, "s", overwrite=False, known=["a.json"]):
            pass
    with pytest.raises(RuntimeError, match="boom"):
        with stage_output(out, "s", overwrite=True, known=["a.json"]) as staging:
            (staging / "a.json").write_text("new")
            raise RuntimeError("boom")
    assert (out / "a.json").read_text() == "old" and completion_problem(out, "s") is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no staging left behind
    with stage_output(out, "s", overwrite=True, known=["a.json"]) as staging:
        (staging / "a.json").write_text("new")
        mark_complete(staging, "s", ["a.json"])
    assert (out / "a.json").read_text() == "new" and completion_problem(out, "s") is None


def test_stage_output_refuses_a_foreign_directory(tmp_path):
    (tmp_path / "thesis.tex").write_text("precious")
    with pytest.raises(ArtefactExistsError, match="thesis.tex"):
        with stage_output(tmp_path, "s", overwrite=True, known=["a.json"]):
            pass
    assert (tmp_path / "thesis.tex").read_text() == "precious"


# --- defect 1: generate --overwrite --------------------------------------------------------------------


def test_overwrite_with_a_broken_checkpoint_keeps_the_old_set(ray_local, vae_ckpt, tmp_path):
    out = tmp_path / "set"
    generate_sample_set(GenerateSpec(str(vae_ckpt), str(out), num_samples=40, shard_size=16), ONE_WORKER)
    before = _hashes(out)
    broken = tmp_path / "broken"
    shutil.copytree(vae_ckpt, broken)
    (broken / "model.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError):
        generate_sample_set(GenerateSpec(str(broken), str(out), num_samples=40, shard_size=16), ONE_WORKER,
                            overwrite=True)
    assert _hashes(out) == before and verify_sample_set(out) == []
    assert json.loads((out / PLAN_FILE).read_text())["seed"] == 0


def test_overwrite_replaces_only_after_the_new_set_is_complete(ray_local, vae_ckpt, tmp_path):
    out = tmp_path / "set"
    old = GenerateSpec(str(vae_ckpt), str(out), num_samples=40, shard_size=16, seed=0)
    generate_sample_set(old, ONE_WORKER)
    new = GenerateSpec(str(vae_ckpt), str(out), num_samples=40, shard_size=16, seed=1)
    seen = []

    def during(index, _state):  # while the new set is drawn, the old one is still complete in place
        seen.append(generate_complete(old))

    result = generate_sample_set(new, ONE_WORKER, overwrite=True, on_shard_done=during)
    assert seen and all(seen)
    assert result.out == str(out) and generate_complete(new) and not generate_complete(old)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["set"]


@pytest.mark.parametrize("inside", [False, True])
def test_out_equal_to_or_inside_the_checkpoint_is_refused(vae_ckpt, tmp_path, inside):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(vae_ckpt, ckpt)
    before = sorted(p.name for p in ckpt.iterdir())
    out = ckpt / "samples" if inside else ckpt
    with pytest.raises(ValueError, match="overlaps the input"):
        generate_sample_set(GenerateSpec(str(ckpt), str(out), num_samples=8, shard_size=8), overwrite=True)
    assert sorted(p.name for p in ckpt.iterdir()) == before


# --- defect 2: weigh publishes all of its output at once -----------------------------------------------


@pytest.fixture(scope="module")
def sets(tmp_path_factory, fmnist_test):
    """Real test images as 'real' and a darkened copy as 'generated' (easy to tell apart)."""
    root = tmp_path_factory.mktemp("sets")
    paths = {}
    for name, images in (("real", fmnist_test.images[:200]), ("gen", fmnist_test.images[200:400] // 2)):
        with SampleSetWriter(root / name, source=f"test:{name}") as writer:
            writer.write(make_table(np.arange(200), images, None, source=f"test:{name}"))
        paths[name] = str(root / name)
    return paths


def _spec(sets, out, seed=0):
    return WeighSpec(real=sets["real"], samples=sets["gen"], out=str(out),
                     config=WeighConfig(backbone="cnn", head=HeadConfig(epochs=1), seed=seed))


def test_weigh_killed_before_publication_is_unfinished_and_resumes(ray_local, sets, tmp_path, monkeypatch):
    out = tmp_path / "weights"
    import rgm_ray.weigh.stage as stage

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # the process dies after the weighted set, before the marker

    monkeypatch.setattr(stage, "mark_complete", killed)
    with pytest.raises(KeyboardInterrupt):
        weigh(_spec(sets, out))
    assert SampleSet(out / "weighted") and not weigh_complete(out) and not (out / COMPLETE_FILE).exists()
    monkeypatch.undo()
    result = weigh(_spec(sets, out))  # no --overwrite needed: nothing finished was there
    assert weigh_complete(out) and result.num_samples == 200
    for name in ("weights_summary.json", "calibration.json", "reliability.png", "classifier"):
        assert (out / name).exists()


def test_weigh_refuses_a_finished_output_and_keeps_it_when_a_replacement_fails(ray_local, sets, tmp_path,
                                                                               monkeypatch):
    out = tmp_path / "weights"
    weigh(_spec(sets, out))
    weighted = _hashes(out / "weighted")
    with pytest.raises(ArtefactExistsError, match="--overwrite"):
        weigh(_spec(sets, out))
    import rgm_ray.weigh.stage as stage

    def fails(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(stage, "write_weight_diagnostics", fails)
    with pytest.raises(OSError):
        weigh(_spec(sets, out, seed=1), overwrite=True)
    assert weigh_complete(out) and _hashes(out / "weighted") == weighted
    assert sorted(p.name for p in tmp_path.iterdir()) == ["weights"]
