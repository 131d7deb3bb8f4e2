import json
import subprocess
import sys

import pytest

from rgm_ray.cli.main import build_parser, main


def _subcommand_parsers(parser, prefix=()):
    """Yield (path, parser) for every (nested) subcommand."""
    for action in parser._actions:
        if action.__class__.__name__ == "_SubParsersAction":
            for name, sub in action.choices.items():
                yield (*prefix, name), sub
                yield from _subcommand_parsers(sub, (*prefix, name))


def test_every_command_has_help(capsys):
    paths = list(_subcommand_parsers(build_parser()))
    assert ("data", "export") in [p for p, _ in paths]
    for path, _ in paths:
        with pytest.raises(SystemExit) as info:
            main([*path, "--help"])
        assert info.value.code == 0
        assert "usage: rgm" in capsys.readouterr().out


def test_console_script_help():
    out = subprocess.run([sys.executable, "-m", "rgm_ray.cli.main", "--help"], capture_output=True,
                         text=True, check=True).stdout
    assert "data" in out


def test_export_then_verify_then_damage(tmp_path, tracking_uri, capsys):
    out = tmp_path / "fm"
    assert main(["data", "export", "--dataset", "fashion-mnist", "--split", "test", "--out", str(out),
                 "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["rows"] == 10000 and summary["shape"] == [1, 28, 28]
    assert main(["data", "verify", str(out)]) == 0
    assert "OK" in capsys.readouterr().out

    # the MLflow run was recorded in the test's store
    import mlflow

    runs = mlflow.search_runs(experiment_names=["rgm_ray"])
    assert len(runs) == 1 and runs["metrics.rows"].iloc[0] == 10000

    shard = out / "shard-00001.parquet"
    shard.write_bytes(shard.read_bytes()[:1000])
    assert main(["data", "verify", str(out)]) == 2
    err = capsys.readouterr().err
    assert "shard-00001.parquet" in err and "shard-00000.parquet" not in err

    assert main(["data", "export", "--split", "test", "--out", str(out), "--no-mlflow"]) == 2
    assert "--overwrite" in capsys.readouterr().err


def test_missing_dataset_is_a_clean_error(tmp_path, capsys):
    assert main(["data", "export", "--root", str(tmp_path), "--out", str(tmp_path / "o"), "--no-mlflow"]) == 2
    assert "apt-get install dataset-fashion-mnist" in capsys.readouterr().err


def test_interruption_and_storage_failures_are_one_line(monkeypatch, tmp_path, capsys):
    import errno

    import rgm_ray.cli.cmd_report as cmd_report
    from rgm_ray.cli.main import main

    def interrupted(run_dir):
        raise KeyboardInterrupt

    def disk_full(run_dir):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "report.md"))

    monkeypatch.setattr(cmd_report, "build_report", interrupted)
    assert main(["report", str(tmp_path)]) == 130
    err = capsys.readouterr().err
    assert "interrupted" in err and "re-run the same command" in err and "Traceback" not in err
    monkeypatch.setattr(cmd_report, "build_report", disk_full)
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "No space left on device" in err and str(tmp_path / "report.md") in err
