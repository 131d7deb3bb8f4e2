"""MLflow as its users expect: a store that outlives a Ray job, runs that always end, params apart from
metrics, generator checkpoints as loadable models, sample sets as dataset inputs, and a resumed
pipeline's history (stale runs closed, finished stages linked). No Ray here: the pipeline's own tree
(stage runs, Tune trials under ``ssl``) is checked in ``test_pipeline_e2e.py``, ``rgm tune``'s in
``test_tune.py``."""

import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import torch

from rgm_ray import tracking
from rgm_ray.cli.main import main
from rgm_ray.models.checkpoint import build_model, load_checkpoint, save_checkpoint
from rgm_ray.models.mlflow_model import MODEL_NAME, GeneratorSampler, log_generator
from rgm_ray.models.registry import get_family
from rgm_ray.pipeline.context import Context
from rgm_ray.pipeline.history import TAG_CLOSED_BY, TAG_REUSED, TAG_STAGE, close_stale_runs, link_reused_stage
from rgm_ray.pipeline.presets import load_preset
from rgm_ray.pipeline.stages import stages_for
from rgm_ray.store import SampleSetWriter, make_table, manifest_digest
from rgm_ray.store.lineage import TAG_MANIFEST_SHA256, log_sample_sets
from rgm_ray.tracking import (TAG_MODEL_URI, TAG_OUT, TAG_PARENT, TAG_PRESET, TAG_VERSION, TrackingStoreError,
                              default_tracking_uri, ensure_experiment, in_ray_job, start_run)


def _client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One SQLite store for the module (creating one costs seconds); each test reads only its own runs."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    ensure_experiment(uri, tracking.DEFAULT_EXPERIMENT)
    return uri


@pytest.fixture
def tracking_uri(store, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    return store


@pytest.fixture
def ray_job(tmp_path, monkeypatch):
    """A Ray job's driver as Ray starts it: no MLFLOW_TRACKING_URI, the supervisor's job variable, and the
    working directory inside the temporary working-dir package."""
    package = tmp_path / "session" / "runtime_resources" / "working_dir_files" / "_ray_pkg_0123abcd"
    package.mkdir(parents=True)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", "{}")
    monkeypatch.chdir(package)
    tracking._warn_once.cache_clear()
    yield package
    tracking._warn_once.cache_clear()


# --- where runs go -------------------------------------------------------------------------------------

def test_a_ray_job_tracks_under_its_run_directory_and_says_so(ray_job, tmp_path, capsys):
    out = tmp_path / "run"
    for name in ("first", "second"):
        with start_run(name, out=out) as tracker:
            tracker.log_dict({"name": name}, "facts.json")
    uri = f"sqlite:///{out / 'mlflow.db'}"
    err = capsys.readouterr().err
    assert err.count("WARNING") == 1 and "MLFLOW_TRACKING_URI" in err and uri in err
    run = _client(uri).get_run(tracker.run_id)
    assert run.info.status == "FINISHED" and run.data.tags[TAG_OUT] == str(out.resolve())
    assert len(list((out / tracking.ARTIFACTS_DIR).rglob("facts.json"))) == 2
    assert list(ray_job.iterdir()) == []  # nothing in the working directory Ray deletes


def test_a_ray_job_without_a_lasting_output_directory_is_refused_in_one_line(ray_job, monkeypatch):
    monkeypatch.delenv("RAY_JOB_CONFIG_JSON_ENV_VAR")
    assert in_ray_job()  # the working-dir package alone says so
    with pytest.raises(TrackingStoreError, match="set MLFLOW_TRACKING_URI"):
        default_tracking_uri()
    with pytest.raises(TrackingStoreError, match="temporary working directory: pass an absolute --out"):
        default_tracking_uri("runs/tiny")  # a relative --out lands in the package Ray deletes
    assert list(ray_job.iterdir()) == []
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert default_tracking_uri() == "http://127.0.0.1:5000"


def test_outside_a_ray_job_the_store_stays_in_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("RAY_JOB_CONFIG_JSON_ENV_VAR", raising=False)
    monkeypatch.chdir(tmp_path)
    assert not in_ray_job() and default_tracking_uri(tmp_path / "run") == f"sqlite:///{tmp_path / 'mlflow.db'}"


# --- how runs end --------------------------------------------------------------------------------------

def test_runs_end_failed_or_killed_and_children_inherit_the_run_directory(tracking_uri, tmp_path):
    ids = {}
    with pytest.raises(RuntimeError):
        with start_run("pipeline", out=tmp_path, tags={TAG_PRESET: "tiny"}) as parent:
            ids["parent"] = parent.run_id
            with start_run("stage", nested=True) as stage:
                ids["stage"] = stage.run_id
                raise RuntimeError("boom")
    previous = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt):
        with start_run("stopped") as stopped:  # `ray job stop` sends SIGTERM
            ids["stopped"] = stopped.run_id
            os.kill(os.getpid(), signal.SIGTERM)
            signal.pause()  # never reached once the handler raised
    assert signal.getsignal(signal.SIGTERM) == previous
    client = _client(tracking_uri)
    runs = {name: client.get_run(run_id) for name, run_id in ids.items()}
    assert {name: run.info.status for name, run in runs.items()} == {
        "parent": "FAILED", "stage": "FAILED", "stopped": "KILLED"}
    tags = runs["stage"].data.tags
    assert tags[TAG_PARENT] == ids["parent"] and tags[TAG_OUT] == str(tmp_path.resolve())
    assert tags[TAG_PRESET] == "tiny" and tags[TAG_VERSION]


# --- resume --------------------------------------------------------------------------------------------

def test_resume_closes_stale_runs_and_links_finished_stages(tracking_uri, tmp_path):
    """A first attempt killed by SIGKILL: its parent and a stage run left RUNNING, one stage finished."""
    client = _client(tracking_uri)
    run_dir = str((tmp_path / "run").resolve())
    experiment = ensure_experiment(tracking_uri, tracking.DEFAULT_EXPERIMENT)
    old_parent = client.create_run(experiment, run_name="pipeline-tiny", tags={TAG_OUT: run_dir}).info.run_id
    data = client.create_run(experiment, run_name="data", tags={TAG_OUT: run_dir, TAG_PARENT: old_parent,
                                                                 TAG_STAGE: "data"}).info.run_id
    client.log_param(data, "dataset", "fashion-mnist")
    client.log_metric(data, "rows", 10000)
    client.log_metric(data, "system/cpu_utilization_percentage", 50.0)
    client.set_terminated(data, "FINISHED")
    weigh = client.create_run(experiment, run_name="weigh_vae", tags={TAG_OUT: run_dir, TAG_PARENT: old_parent,
                                                                       TAG_STAGE: "weigh_vae"}).info.run_id
    elsewhere = client.create_run(experiment, tags={TAG_OUT: str(tmp_path / "other")}).info.run_id
    parents = []
    for stale in (2, 0):  # the second attempt closes both; the third finds nothing left open
        with start_run("pipeline-tiny", out=run_dir) as parent:
            parents.append(parent.run_id)
            link = parent.link()
            assert close_stale_runs(link) == stale
            assert link_reused_stage(link, "data") == data  # a copy's copy still names the original
            assert link_reused_stage(link, "weigh_vae") is None  # never finished: no empty run
    status = {run_id: client.get_run(run_id).info.status for run_id in (old_parent, data, weigh, elsewhere)}
    assert status == {old_parent: "KILLED", data: "FINISHED", weigh: "KILLED", elsewhere: "RUNNING"}
    assert client.get_run(weigh).data.tags[TAG_CLOSED_BY] == parents[0]
    (copy,) = client.search_runs([experiment], f"tags.`{TAG_PARENT}` = '{parents[1]}'")
    assert copy.info.run_name == "data" and copy.info.status == "FINISHED" and copy.data.tags[TAG_REUSED] == data
    assert copy.data.params == {"dataset": "fashion-mnist"} and copy.data.metrics == {"rows": 10000.0}


# --- what runs hold ------------------------------------------------------------------------------------

def test_rgm_train_in_a_ray_job_logs_params_and_a_registered_generator(ray_job, tmp_path, capsys):
    import mlflow

    out = tmp_path / "run" / "models" / "vae"
    out.parent.mkdir(parents=True)
    (tmp_path / "run" / "pipeline.json").write_text("{}")  # a pipeline run directory's folder
    argv = ["train", "vae", "--preset", "tiny", "--out", str(out), "--max-steps", "2", "--register-model",
            "tiny-vae", "--json"]
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out)  # MLflow's registry lines went to stderr
    uri = f"sqlite:///{tmp_path / 'run' / 'mlflow.db'}"  # the pipeline's own store, not in --out
    client = _client(uri)
    (run,) = client.search_runs([client.get_experiment_by_name(tracking.DEFAULT_EXPERIMENT).experiment_id])
    params, metrics = run.data.params, run.data.metrics
    assert params["train_config.lr"] == "0.002" and params["train_config.batch_size"] == "16"
    assert params["train_config.epochs"] == "1" and params["preset"] == "tiny" and run.data.tags[TAG_PRESET] == "tiny"
    assert "lr" not in metrics and "epochs" not in metrics and np.isfinite(metrics["scheduled_lr"])
    assert metrics["steps"] == 2 and metrics["test_bpd"] == pytest.approx(summary["test_bpd"])
    version = client.get_model_version("tiny-vae", "1")
    assert version.run_id == run.info.run_id and run.data.tags[TAG_MODEL_URI].startswith("models:/")
    mlflow.set_tracking_uri(uri)
    sampler = mlflow.pytorch.load_model("models:/tiny-vae/1")
    images = sampler.sample(3, seed=5)
    expected = get_family("vae").draw(load_checkpoint(out / "checkpoint"), 3, seed=5)
    assert images.dtype == torch.uint8 and images.shape == (3, 1, 28, 28)
    np.testing.assert_array_equal(images.numpy(), expected)


@pytest.mark.parametrize("kind, config", [
    ("pixelcnnpp", {"nr_resnet": 1, "nr_filters": 8, "nr_logistic_mix": 3, "dropout": 0.0}),
    ("gan", {"latent_dim": 16, "base_channels": 8}),
])
def test_generator_models_load_and_sample_as_their_checkpoints(tracking_uri, tmp_path, kind, config):
    import mlflow

    torch.manual_seed(0)
    checkpoint = save_checkpoint(tmp_path / "checkpoint",
                                 build_model(kind, {**config, "in_channels": 1, "image_size": 28}))
    with start_run(f"train-{kind}") as tracker:
        uri = log_generator(tracker, checkpoint)
    assert isinstance(mlflow.pytorch.load_model(f"runs:/{tracker.run_id}/{MODEL_NAME}"), GeneratorSampler)
    sampled = mlflow.pytorch.load_model(uri).sample(2, seed=1).numpy()
    np.testing.assert_array_equal(sampled, get_family(kind).draw(load_checkpoint(checkpoint), 2, seed=1))
    served = mlflow.pyfunc.load_model(uri)
    assert served.metadata.get_input_schema().inputs[0].shape == (-1, 2)
    assert served.metadata.get_output_schema().inputs[0].shape == (-1, 1, 28, 28)
    images = served.predict(np.array([[2, 1], [1, 7]], dtype=np.int64))  # rows (n, seed), concatenated
    assert images.dtype == np.uint8 and images.shape == (3, 1, 28, 28)
    np.testing.assert_array_equal(images[:2], sampled)


def test_a_committed_checkpoint_copied_by_the_pipeline_gets_its_config_and_model(tracking_uri, tmp_path):
    import mlflow

    ctx = Context(preset_name="demo", preset=load_preset("demo"), run_dir=tmp_path / "run")
    train_vae = next(stage for stage in stages_for(ctx) if stage.name == "train_vae")
    with start_run("train_vae") as tracker:
        result = train_vae.run(ctx, tracker)
    run = _client(tracking_uri).get_run(tracker.run_id)
    assert run.data.params["train.lr"] == "0.002" and run.data.params["model.latent_dim"] == "16"
    assert run.data.params["pretrained"] == "demo" and run.data.metrics["epochs_run"] == pytest.approx(
        result.metrics["epochs"]) and "lr" not in run.data.metrics
    assert mlflow.pytorch.load_model(run.data.tags[TAG_MODEL_URI]).sample(1).shape == (1, 1, 28, 28)


def test_sample_sets_are_logged_as_dataset_inputs_with_their_manifest_digest(tracking_uri, tmp_path, fmnist_test):
    path = tmp_path / "run" / "samples" / "vae"
    with SampleSetWriter(path, source="test:generated") as writer:
        writer.write(make_table(np.arange(8), fmnist_test.images[:8], None, source="test:generated"))
    with start_run("evaluate") as tracker:
        log_sample_sets(tracker, [path, Path(os.path.relpath(path)), tmp_path / "not_a_set"], context="evaluation")
    (logged,) = _client(tracking_uri).get_run(tracker.run_id).inputs.dataset_inputs  # one set, once
    digest = manifest_digest(path)
    dataset, tags = logged.dataset, {tag.key: tag.value for tag in logged.tags}
    assert dataset.name == "samples/vae" and dataset.digest == digest[:36]
    assert json.loads(dataset.source)["uri"] == str(path.resolve())
    assert tags == {"mlflow.data.context": "evaluation", TAG_MANIFEST_SHA256: digest, "rgm.rows": "8"}
