"""Issue 19: every bad number, path or config on the command line is one line on stderr, exit code 2, and
nothing written, before any Ray work (checks that need the input set read its manifest only).

One table of (argv, a substring of the error line), run in-process through ``main``. ``{out}`` is a fresh
output path that must not appear; the other placeholders are fixtures of the module: a 12-row weighted
set, a plain file, a missing path, an unfinished set (no manifest), a set missing a shard, sweep configs.
``unreadable:`` marks the path the case makes unreadable (the tests run as root, so permissions cannot:
``open`` refuses it with EACCES instead).
"""

from __future__ import annotations

import builtins
import errno
import functools
import io
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

import rgm_ray
from rgm_ray.cli.main import main
from rgm_ray.store import LOG_WEIGHT, MANIFEST_NAME, SampleSetWriter, make_table

ROWS = 12
ASSETS = Path(rgm_ray.__file__).parent / "assets" / "demo"
SWEEP = Path(rgm_ray.__file__).parent.parent / "tune_configs" / "ssl_demo.yaml"


def _write_set(path: Path) -> Path:
    with SampleSetWriter(path, source="test:cli") as writer:
        for shard in range(2):
            ids = np.arange(shard * ROWS // 2, (shard + 1) * ROWS // 2)
            writer.write(make_table(ids, np.zeros((len(ids), 1, 28, 28), np.uint8), None, source="test:cli",
                                    extra={LOG_WEIGHT: np.zeros(len(ids))}))
    return path


def _sweep(path: Path, **changes) -> str:
    raw = yaml.safe_load(SWEEP.read_text())
    for key, value in changes.items():
        section, _, name = key.partition("__")
        (raw[section] if name else raw)[name or section] = value
    path.write_text(yaml.safe_dump(raw))
    return str(path)


@pytest.fixture(scope="module")
def paths(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("cli_inputs")
    (root / "a_file").write_text("not a directory")
    (root / "unfinished").mkdir()
    broken = _write_set(root / "broken")
    (broken / "shard-00001.parquet").unlink()
    (root / "not_yaml.yaml").write_text("grid: [1,\n")
    for name, state in (("state_list", "[1, 2]"), ("state_outputs", '{"preset": "tiny", "outputs": []}'),
                        ("state_garbage", "{not json")):
        (root / name).mkdir()
        (root / name / "pipeline.json").write_text(state)
    return {"set": str(_write_set(root / "set")), "file": str(root / "a_file"), "missing": str(root / "missing"),
            "unfinished": str(root / "unfinished"), "broken": str(broken), "root": str(root),
            "vae": str(ASSETS / "vae"), "vae_checkpoint": str(ASSETS / "vae" / "checkpoint"), "sweep": str(SWEEP),
            "unknown_key": _sweep(root / "unknown_key.yaml", bogus_key=1),
            "wrong_type": _sweep(root / "wrong_type.yaml", max_concurrent_trials="two"),
            "wrong_train_type": _sweep(root / "wrong_train_type.yaml", train__epochs="many"),
            "not_yaml": str(root / "not_yaml.yaml"),
            **{name: str(root / name) for name in ("state_list", "state_outputs", "state_garbage")}}


O = ["--out", "{out}", "--no-mlflow"]
GEN = ["generate", "--checkpoint", "{vae}", "--num-samples", "10"]
RES = ["resample", "--samples", "{set}", "--k", "2"]
WEIGH = ["weigh", "--real", "fashion-mnist", "--samples", "{set}"]
EVAL = ["evaluate", "--real", "fashion-mnist", "--set", "a={set}", "--k", "10"]
TUNE = ["tune", "--no-mlflow", "--out", "{out}", "--config"]
PIPE = ["pipeline", "--preset", "tiny", *O]
TRAIN = ["train", "vae", "--preset", "tiny", *O]
SSL = ["ssl", *O]
NOT_A_DIR = "is a file, not a directory"

CASES = {
    # generate
    "generate-num-samples-0": (["generate", "--checkpoint", "{vae}", "--num-samples", "0", *O],
                               "num_samples and shard_size must be positive, got 0"),
    "generate-num-samples-negative": (["generate", "--checkpoint", "{vae}", "--num-samples", "-1", *O],
                                      "must be positive, got -1"),
    "generate-num-samples-text": (["generate", "--checkpoint", "{vae}", "--num-samples", "1e3", *O],
                                  "argument --num-samples: invalid int value: '1e3'"),
    "generate-shard-size-0": ([*GEN, "--shard-size", "0", *O], "must be positive, got 10, 0"),
    "generate-workers-0": ([*GEN, "--workers", "0", *O], "workers must be a positive int, got 0"),
    "generate-seed-negative": ([*GEN, "--seed", "-1", *O], "seed must be non-negative, got -1"),
    "generate-batch-size-0": ([*GEN, "--batch-size", "0", *O], "batch_size must be a positive int, got 0"),
    "generate-checkpoint-missing": (["generate", "--checkpoint", "{missing}", "--num-samples", "10", *O],
                                    "is not an rgm_ray checkpoint directory"),
    "generate-checkpoint-a-file": (["generate", "--checkpoint", "{file}", "--num-samples", "10", *O],
                                   "is not an rgm_ray checkpoint directory"),
    "generate-checkpoint-unreadable": (["generate", "--checkpoint", "unreadable:{vae}", "--num-samples", "10", *O],
                                       "Permission denied"),
    "generate-out-a-file": ([*GEN, "--out", "{file}", "--no-mlflow"], f"argument --out: {{file}} {NOT_A_DIR}"),
    "generate-out-under-a-file": ([*GEN, "--out", "{file}/set", "--no-mlflow"], "which is a file, not a directory"),
    # resample (the set has 12 rows)
    "resample-k-0": (["resample", "--samples", "{set}", "--k", "0", *O], "k must be an integer >= 1, got 0"),
    "resample-k-above-rows": (["resample", "--samples", "{set}", "--k", "13", *O], "k=13 exceeds the 12 rows"),
    "resample-alpha-negative": ([*RES, "--alpha", "-0.1", *O], "alpha must be a number in [0, 1], got -0.1"),
    "resample-alpha-above-1": ([*RES, "--alpha", "1.5", *O], "alpha must be a number in [0, 1], got 1.5"),
    "resample-target-ess-above-rows": ([*RES, "--target-ess", "13", *O], "target_ess=13.0 exceeds the 12 rows"),
    "resample-target-ess-0": ([*RES, "--target-ess", "0", *O], "target_ess must be a positive number"),
    "resample-seed-negative": ([*RES, "--seed", "-1", *O], "seed must be a non-negative integer, got -1"),
    "resample-shard-size-0": ([*RES, "--shard-size", "0", *O], "shard_size must be an integer >= 1, got 0"),
    "resample-samples-missing": (["resample", "--samples", "{missing}", "--k", "2", *O],
                                 "{missing}: no such sample-set directory"),
    "resample-samples-a-file": (["resample", "--samples", "{file}", "--k", "2", *O],
                                "{file}: no such sample-set directory"),
    "resample-samples-unfinished": (["resample", "--samples", "{unfinished}", "--k", "2", *O],
                                    "is not a finished sample set"),
    "resample-samples-shard-missing": (["resample", "--samples", "{broken}", "--k", "2", *O],
                                       f"listed in {MANIFEST_NAME} are missing: shard-00001.parquet"),
    "resample-samples-unreadable": (["resample", "--samples", "unreadable:{set}", "--k", "2", *O],
                                    "Permission denied: {set}/" + MANIFEST_NAME),
    "resample-out-a-file": ([*RES, "--out", "{file}", "--no-mlflow"], NOT_A_DIR),
    # weigh
    "weigh-samples-missing": (["weigh", "--real", "fashion-mnist", "--samples", "{missing}", *O],
                              "no such sample-set directory"),
    "weigh-real-missing": (["weigh", "--real", "{missing}", "--samples", "{set}", *O], "neither a dataset name"),
    "weigh-folds-1": ([*WEIGH, "--folds", "1", *O], "folds must be an integer >= 2"),
    "weigh-folds-0": ([*WEIGH, "--folds", "0", *O], "folds must be an integer >= 2"),
    "weigh-calibration-fraction-1.5": ([*WEIGH, "--calibration-fraction", "1.5", *O],
                                       "calibration_fraction must be in (0, 1), got 1.5"),
    "weigh-epochs-0": ([*WEIGH, "--epochs", "0", *O], "head.epochs must be a positive int, got 0"),
    "weigh-backbone-unknown": ([*WEIGH, "--backbone", "resnet", *O], "argument --backbone: invalid choice: 'resnet'"),
    "weigh-inception-without-weights": ([*WEIGH, "--backbone", "inception", *O],
                                        "--backbone inception needs --inception-weights PATH"),
    "weigh-inception-weights-missing": ([*WEIGH, "--backbone", "inception", "--inception-weights", "{missing}", *O],
                                        "--inception-weights {missing}: no such file"),
    "weigh-discriminator-without-checkpoint": ([*WEIGH, "--backbone", "gan-discriminator", *O],
                                               "--backbone gan-discriminator needs --checkpoint DIR"),
    "weigh-discriminator-of-a-vae": ([*WEIGH, "--backbone", "gan-discriminator", "--checkpoint", "{vae_checkpoint}",
                                      *O], "a 'vae' checkpoint, not a GAN"),
    "weigh-checkpoint-without-discriminator": ([*WEIGH, "--checkpoint", "{vae_checkpoint}", *O],
                                               "--checkpoint only applies to --backbone gan-discriminator"),
    "weigh-domain-checkpoint-missing": ([*WEIGH, "--domain-checkpoint", "{missing}", *O],
                                        "{missing} is not an rgm_ray checkpoint directory"),
    # evaluate (the set has 12 rows)
    "evaluate-k-0": (["evaluate", "--real", "fashion-mnist", "--set", "a={set}", "--k", "0", *O],
                     "k must be at least 10"),
    "evaluate-k-above-rows": (["evaluate", "--real", "fashion-mnist", "--set", "a={set}", "--k", "13", *O],
                              "set 'a' has 12 images, fewer than k=13"),
    "evaluate-runs-0": ([*EVAL, "--runs", "0", *O], "runs must be >= 1"),
    "evaluate-batch-size-0": ([*EVAL, "--batch-size", "0", *O], "batch_size must be a positive int, got 0"),
    "evaluate-threads-0": ([*EVAL, "--threads", "0", *O], "argument --threads: must be an integer >= 1, got '0'"),
    "evaluate-set-syntax": (["evaluate", "--real", "fashion-mnist", "--set", "{set}", "--k", "10", *O],
                            "expected NAME=DIR"),
    "evaluate-set-missing": (["evaluate", "--real", "fashion-mnist", "--set", "a={missing}", "--k", "10", *O],
                             "{missing}: no such sample-set directory"),
    # tune
    "tune-config-missing": ([*TUNE, "{missing}"], "{missing}: no such sweep configuration"),
    "tune-config-a-directory": ([*TUNE, "{root}"], "no such sweep configuration"),
    "tune-config-unreadable": ([*TUNE, "unreadable:{sweep}"], "Permission denied"),
    "tune-config-not-yaml": ([*TUNE, "{not_yaml}"], "not valid YAML"),
    "tune-config-unknown-key": ([*TUNE, "{unknown_key}"], "key 'bogus_key': unknown key"),
    "tune-config-wrong-type": ([*TUNE, "{wrong_type}"], "key 'max_concurrent_trials': must be a positive int"),
    "tune-config-wrong-train-type": ([*TUNE, "{wrong_train_type}"], "key 'train.epochs': epochs must be a positive"),
    "tune-set-unknown-key": ([*TUNE, "{sweep}", "--set", "bogus=1"], "key 'bogus': unknown key"),
    "tune-set-unknown-train-key": ([*TUNE, "{sweep}", "--set", "train.bogus=1"], "key 'train.bogus': unknown setting"),
    "tune-set-wrong-type": ([*TUNE, "{sweep}", "--set", "grid.seed=[-1]"], "seeds must be non-negative ints"),
    "tune-out-a-file": (["tune", "--no-mlflow", "--config", "{sweep}", "--out", "{file}"], NOT_A_DIR),
    # pipeline / demo
    "pipeline-set-unknown-section": ([*PIPE, "--set", "bogus.x=1"], "key 'bogus': unknown"),
    "pipeline-set-unknown-key": ([*PIPE, "--set", "generate.bogus=1"], "unknown generate keys ['bogus']"),
    "pipeline-set-yaml-text-number": ([*PIPE, "--set", "generate.num_samples=1e3"],
                                      "generate.num_samples must be int, got '1e3' (str); YAML reads 1e3 as text: "
                                      "write 1000"),
    "pipeline-set-negative": ([*PIPE, "--set", "generate.num_samples=-5"], "sizes must be positive"),
    "pipeline-set-syntax": ([*PIPE, "--set", "generate"], "must look like key.path=value"),
    "pipeline-until-unknown": ([*PIPE, "--until", "bogus"], "unknown stage 'bogus'"),
    "pipeline-workers-0": ([*PIPE, "--workers", "0"], "workers must be a positive int, got 0"),
    "pipeline-out-a-file": (["pipeline", "--preset", "tiny", "--out", "{file}", "--no-mlflow"], NOT_A_DIR),
    "demo-set-wrong-type": (["demo", *O, "--set", "evaluate.k=abc"], "evaluate.k must be int, got 'abc'"),
    "demo-set-yaml-text-number": (["demo", *O, "--set", "generate.num_samples=1e3"], "write 1000"),
    # train
    "train-epochs-0": ([*TRAIN, "--epochs", "0"], "train.epochs must be positive, got 0"),
    "train-lr-negative": ([*TRAIN, "--lr", "-1"], "need lr > 0"),
    "train-batch-size-0": ([*TRAIN, "--batch-size", "0"], "train.batch_size must be positive, got 0"),
    "train-seed-negative": ([*TRAIN, "--seed", "-1"], "train.seed must be non-negative, got -1"),
    "train-threads-0": ([*TRAIN, "--threads", "0"], "argument --threads: must be an integer >= 1"),
    "train-out-a-file": (["train", "vae", "--preset", "tiny", "--out", "{file}", "--no-mlflow"], NOT_A_DIR),
    # ssl
    "ssl-labels-0": ([*SSL, "--labels", "0"], "argument --labels: labels must be a positive int or 'all', got 0"),
    "ssl-epochs-0": ([*SSL, "--epochs", "0"], "epochs must be a positive int, got 0"),
    "ssl-sl-weight-negative": ([*SSL, "--sl-weight", "-1"], "sl_weight must be a finite number >= 0"),
    "ssl-unlabeled-missing": ([*SSL, "--unlabeled", "{missing}"], "{missing}: no such sample-set directory"),
    "ssl-unlabeled-a-file": ([*SSL, "--unlabeled", "{file}"], "{file}: no such sample-set directory"),
    # data
    "data-export-shard-size-0": (["data", "export", "--shard-size", "0", *O], "shard_size must be positive, got 0"),
    "data-export-out-a-file": (["data", "export", "--out", "{file}", "--no-mlflow"], NOT_A_DIR),
    "data-import-missing": (["data", "import", "{missing}", *O], "{missing}: no such file or folder"),
    "data-import-shard-size-0": (["data", "import", "{set}", "--shard-size", "0", *O],
                                 "shard_size must be a positive int, got 0"),
    "data-verify-missing": (["data", "verify", "{missing}"], "{missing}: no such directory"),
    "data-verify-unfinished": (["data", "verify", "{unfinished}"], "is not a finished sample set"),
    # a damaged pipeline.json: the report and a resumed pipeline name it
    "report-state-not-an-object": (["report", "{state_list}"], "pipeline.json: not a pipeline state file"),
    "report-state-outputs-a-list": (["report", "{state_outputs}"], "field 'outputs' must be a JSON object"),
    "report-state-not-json": (["report", "{state_garbage}"], "pipeline.json: unreadable"),
    "pipeline-resume-bad-state": (["pipeline", "--preset", "tiny", "--out", "{state_outputs}", "--no-mlflow"],
                                  "field 'outputs' must be a JSON object"),
}


def _unreadable(monkeypatch, directory: Path) -> None:
    """Python's ``open`` of anything under ``directory`` fails with EACCES, as for a file mode 000."""
    directory = directory.resolve()

    def refusing(fn):
        @functools.wraps(fn)
        def wrapper(file, *args, **kwargs):
            if isinstance(file, (str, os.PathLike)) and Path(file).resolve().is_relative_to(directory):
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(file))
            return fn(file, *args, **kwargs)
        return wrapper

    for module in (builtins, io):
        monkeypatch.setattr(module, "open", refusing(module.open))


def _listing(*roots: Path) -> set[str]:
    return {str(p) for root in roots for p in root.rglob("*")}


@pytest.mark.parametrize("argv, expected", list(CASES.values()), ids=list(CASES))
def test_a_bad_command_line_is_one_line_exit_2_and_writes_nothing(paths, tmp_path, monkeypatch, capsys, argv,
                                                                  expected):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.chdir(tmp_path)  # a relative default (runs/..., mlruns) would land here, and be seen
    values = {**paths, "out": str(tmp_path / "out")}
    args = [a.format(**values) for a in argv]
    for i, arg in enumerate(args):
        if arg.startswith("unreadable:"):
            args[i] = arg.removeprefix("unreadable:")
            _unreadable(monkeypatch, Path(args[i]))
    before = _listing(tmp_path, Path(paths["root"]))
    try:
        code = main(args)
    except SystemExit as exc:  # argparse's errors
        code = exc.code
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"rgm {args[0]}") and ": error: " in lines[0], lines[0]
    assert expected.format(**values) in lines[0], lines[0]
    assert _listing(tmp_path, Path(paths["root"])) == before  # nothing written, not even a lock file
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()  # so that one failure does not fail every later case
        pytest.fail("Ray was started: the check came after the cluster")
