import json

import numpy as np
import pytest
import torch

from rgm_ray.cli.main import main
from rgm_ray.models.checkpoint import (CheckpointError, build_model, checkpoint_digest, load_checkpoint,
                                       save_checkpoint)
from rgm_ray.models.training import TrainConfig, train
from rgm_ray.models.vae import VAE, VAEConfig
from rgm_ray.pipeline.presets import PRESETS, load_preset, section


def _tiny_vae():
    torch.manual_seed(0)  # identical initial weights for every model built here
    return VAE(VAEConfig(in_channels=1, image_size=28, latent_dim=4, base_channels=4))


def _config(**kw):
    base = dict(epochs=1, max_steps=6, batch_size=8, lr=2e-3, eval_every=3, eval_images=16,
                checkpoint_every=3, train_images=96, grid_images=4, seed=3)
    return TrainConfig(**{**base, **kw})


def test_train_writes_checkpoint_grid_metrics_and_round_trips(tmp_path, fmnist_test):
    model = _tiny_vae()
    summary = train(model, fmnist_test.images, fmnist_test.images[:32], _config(), tmp_path, meta={"dataset": "x"})
    assert summary["steps"] == 6 and np.isfinite(summary["test_bpd"])
    assert (tmp_path / "samples.png").stat().st_size > 0
    assert json.loads((tmp_path / "metrics.json").read_text())["steps"] == 6
    loaded = load_checkpoint(tmp_path / "checkpoint")
    assert isinstance(loaded, VAE) and loaded.config == model.config
    torch.testing.assert_close(loaded.sample(3, seed=1), model.sample(3, seed=1))
    assert len(checkpoint_digest(tmp_path / "checkpoint")) == 64


def test_resume_continues_exactly(tmp_path, fmnist_test):
    images = fmnist_test.images
    straight = _tiny_vae()
    train(straight, images, images[:16], _config(max_steps=6), tmp_path / "a", meta={})
    interrupted = _tiny_vae()
    train(interrupted, images, images[:16], _config(max_steps=3), tmp_path / "b", meta={})
    resumed = _tiny_vae()
    summary = train(resumed, images, images[:16], _config(max_steps=6), tmp_path / "b", meta={})
    assert summary["steps"] == 6
    for (name, a), (_, b) in zip(straight.state_dict().items(), resumed.state_dict().items()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)


def test_resume_refuses_other_configuration(tmp_path, fmnist_test):
    train(_tiny_vae(), fmnist_test.images, fmnist_test.images[:16], _config(max_steps=3), tmp_path, meta={})
    with pytest.raises(ValueError, match="different configuration"):
        train(_tiny_vae(), fmnist_test.images, fmnist_test.images[:16], _config(max_steps=6, lr=1e-4),
              tmp_path, meta={})


def test_corrupted_or_wrong_checkpoints_fail_clearly(tmp_path):
    ckpt = save_checkpoint(tmp_path / "c", _tiny_vae())
    weights = ckpt / "model.pt"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="model.pt.*cannot be loaded"):
        load_checkpoint(ckpt)
    with pytest.raises(CheckpointError, match="not an rgm_ray checkpoint"):
        load_checkpoint(tmp_path)
    other = save_checkpoint(tmp_path / "o", VAE(VAEConfig(in_channels=1, image_size=28, latent_dim=5,
                                                          base_channels=4)))
    config = json.loads((other / "config.json").read_text())
    config["model_config"]["latent_dim"] = 4
    (other / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="do not fit"):
        load_checkpoint(other)
    with pytest.raises(CheckpointError, match="unknown model kind"):
        build_model("diffusion", {})


def test_checkpoint_loads_with_weights_only(tmp_path, monkeypatch):
    ckpt = save_checkpoint(tmp_path / "c", _tiny_vae())
    seen = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **kw: seen.append(kw.get("weights_only")) or real_load(*a, **kw))
    load_checkpoint(ckpt)
    assert seen == [True]


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_validates(name):
    preset = load_preset(name)
    for key in preset:
        section(preset, key)
    model = section(preset, "pixelcnn")
    assert model.in_channels in (1, 3)


def test_paper_preset_matches_thesis():
    preset = load_preset("paper")
    assert preset["data"]["dataset"] == "cifar10"
    pcnn = section(preset, "pixelcnn")
    assert (pcnn.nr_filters, pcnn.nr_resnet, pcnn.nr_logistic_mix, pcnn.in_channels, pcnn.image_size) == (160, 5, 10, 3, 32)
    assert section(preset, "vae").latent_dim == 180


def test_overrides_and_their_errors():
    preset = load_preset("tiny", ["pixelcnn.nr_filters=12", "train_vae.lr=0.01"])
    assert section(preset, "pixelcnn").nr_filters == 12 and section(preset, "train_vae").lr == 0.01
    with pytest.raises(ValueError, match="pixelcnn"):
        load_preset("tiny", ["pixelcnn.nr_filters=-1"])
    with pytest.raises(ValueError, match="unknown"):
        load_preset("tiny", ["train_vae.learning_rate=1"])
    with pytest.raises(ValueError, match="must look like"):
        load_preset("tiny", ["nonsense"])
    with pytest.raises(ValueError, match="unknown preset"):
        load_preset("huge")


def test_cli_train_vae_tiny(tmp_path, tracking_uri, capsys):
    assert main(["train", "vae", "--preset", "tiny", "--out", str(tmp_path / "run"), "--max-steps", "4",
                 "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["steps"] == 4
    assert isinstance(load_checkpoint(summary["checkpoint"]), VAE)
    import mlflow

    runs = mlflow.search_runs(experiment_names=["rgm_ray"])
    assert runs["params.model"].tolist() == ["vae"] and runs["metrics.test_bpd"].notna().all()
