"""Issue 19, defect 3: a manifest can only name files inside its own set (no paths, no escaping symlinks)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from rgm_ray.cli.main import main
from rgm_ray.store import MANIFEST_NAME, ManifestError, SampleSet, SampleSetWriter, make_table, verify_sample_set


@pytest.fixture
def sample_set(tmp_path):
    out = tmp_path / "set"
    with SampleSetWriter(out, source="test:set") as writer:
        writer.write(make_table(np.arange(4), np.zeros((4, 1, 8, 8), np.uint8), None, source="test:set"))
    return out


def _point_shard_at(directory, name):
    manifest = json.loads((directory / MANIFEST_NAME).read_text())
    manifest["shards"][0]["file"] = name
    (directory / MANIFEST_NAME).write_text(json.dumps(manifest))


@pytest.mark.parametrize("name", ["/etc/passwd", "../../x.parquet", "sub/shard.parquet", "..", ".hidden.parquet"])
def test_a_shard_path_outside_the_set_is_refused_by_every_reader(sample_set, name, capsys):
    _point_shard_at(sample_set, name)
    with pytest.raises(ManifestError, match="not a plain file name"):
        SampleSet(sample_set)
    problems = verify_sample_set(sample_set)
    assert len(problems) == 1 and "not a plain file name" in str(problems[0])
    assert main(["data", "verify", str(sample_set)]) == 2
    err = capsys.readouterr().err
    assert "refusing to read outside the set" in err and "Traceback" not in err


def test_a_symlinked_shard_leaving_the_set_is_refused(sample_set, tmp_path):
    outside = tmp_path / "elsewhere.parquet"
    shard = next(sample_set.glob("shard-*.parquet"))
    os.replace(shard, outside)
    os.symlink(outside, shard)  # same name, but the bytes live outside the set
    with pytest.raises(ManifestError, match="outside the set"):
        SampleSet(sample_set)
    problems = verify_sample_set(sample_set)
    assert len(problems) == 1 and "outside the set" in problems[0].message


def test_an_intact_set_still_opens(sample_set):
    assert len(SampleSet(sample_set)) == 4 and verify_sample_set(sample_set) == []
