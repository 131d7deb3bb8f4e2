"""Issue 19, defects 4-6: every stage checks its input sets as ``rgm data verify`` does, and a resume
redraws a shard another plan (another seed) drew.

Tiny sets written with the store's writer, then damaged: a flipped byte (hash), a shard without
``log_weight`` whose hash the manifest was updated for (columns), ids repeated across shards, an
image of the wrong length, a column type that differs between shards.
"""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rgm_ray.cli.main import main
from rgm_ray.evaluate.metrics import MIN_SET_SIZE
from rgm_ray.evaluate.protocol import EvalConfig
from rgm_ray.evaluate.stage import EvaluateSpec, evaluate_sets
from rgm_ray.generate import GenerateSpec, generate_sample_set
from rgm_ray.generate.plugins import Plugin
from rgm_ray.generate.shards import shard_table, write_generated_shard
from rgm_ray.resample.config import ResampleConfig
from rgm_ray.resample.stage import ResampleSpec, resample_sample_set
from rgm_ray.runtime import ClusterOptions
from rgm_ray.ssl.sources import SET, SourceSpec, open_sample_set_source
from rgm_ray.store import (LOG_WEIGHT, MANIFEST_NAME, SampleSetWriter, finish_sample_set, make_table, read_manifest,
                           verify_sample_set, write_shard)
from rgm_ray.store.schema import META_PLAN, META_SOURCE
from rgm_ray.weigh.stage import WeighSpec, weigh

SHAPE = (1, 4, 4)
ROWS = 6  # per shard


def _table(shard: int, *, ids=None, log_weight=True) -> pa.Table:
    ids = np.arange(shard * ROWS, (shard + 1) * ROWS) if ids is None else np.asarray(ids)
    images = np.random.default_rng(shard).integers(0, 256, (len(ids), *SHAPE), dtype=np.uint8)
    extra = {LOG_WEIGHT: np.linspace(-1, 1, len(ids))} if log_weight else {}
    return make_table(ids, images, None, source="test:integrity", extra=extra)


def _write_set(path, shards: int = 3):
    with SampleSetWriter(path, source="test:integrity") as writer:
        for shard in range(shards):
            writer.write(_table(shard))
    return path


def _replace_shard(path, index: int, table: pa.Table) -> None:
    """Put ``table`` in as shard ``index`` and record its hash, as a careless tool would: only the
    content checks can tell."""
    manifest = read_manifest(path)
    shards = list(manifest.shards)
    shards[index] = write_shard(path, index, table)
    finish_sample_set(path, shards, shape=manifest.shape, source=manifest.source, columns=list(manifest.columns),
                      prov=manifest.provenance, info=manifest.info)


def _flip_a_byte(path):
    shard = path / "shard-00001.parquet"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x01
    shard.write_bytes(bytes(data))
    return shard


def _resample(samples, out):
    return resample_sample_set(ResampleSpec(str(samples), str(out), ResampleConfig(k=3)))


def _weigh(samples, out, intact):
    return weigh(WeighSpec(real=str(intact), samples=str(samples), out=str(out)))


def _evaluate(samples, out, intact):
    return evaluate_sets(EvaluateSpec(real=str(intact), sets={"bad": str(samples)}, out=str(out),
                                      config=EvalConfig(k=MIN_SET_SIZE, runs=1)))


def _ssl(samples, out, intact):
    return open_sample_set_source(SourceSpec(SET, samples), SHAPE)


@pytest.mark.ray
@pytest.mark.parametrize("stage", [_resample, _weigh, _evaluate, _ssl], ids=["resample", "weigh", "evaluate", "ssl"])
def test_a_flipped_byte_is_refused_naming_the_shard_and_nothing_is_written(ray_local, tmp_path, stage):
    intact = _write_set(tmp_path / "intact")
    damaged = _write_set(tmp_path / "damaged")
    shard = _flip_a_byte(damaged)
    assert {p.file for p in verify_sample_set(damaged)} == {shard.name}
    out = tmp_path / "out"
    args = (damaged, out) if stage is _resample else (damaged, out, intact)
    with pytest.raises(ValueError, match=f"{shard}: SHA-256 differs from {MANIFEST_NAME}") as info:
        stage(*args)
    assert "\n" not in str(info.value)
    assert not out.exists()


@pytest.mark.ray
def test_a_shard_lacking_log_weight_is_one_line_naming_file_and_column(ray_local, tmp_path, capsys):
    samples = _write_set(tmp_path / "set")
    _replace_shard(samples, 1, _table(1, log_weight=False))
    assert [str(p) for p in verify_sample_set(samples)] == ["shard-00001.parquet: missing column 'log_weight'"]
    out = tmp_path / "out"
    assert main(["resample", "--samples", str(samples), "--k", "2", "--out", str(out), "--no-mlflow"]) == 2
    err = capsys.readouterr().err
    last = err.splitlines()[-1]  # after the progress bar
    assert last.startswith("rgm resample: error: ") and "Traceback" not in err
    assert f"{samples / 'shard-00001.parquet'}: missing column 'log_weight'" in last and not out.exists()


def _wrong_image_length() -> pa.Table:
    table = _table(1)
    short = pa.array([bytes(15)] * ROWS, pa.binary())  # 1*4*4 = 16 bytes expected
    return table.set_column(table.schema.get_field_index("image"), table.schema.field("image"), short)


def _log_weight_as_float64() -> pa.Table:
    table = _table(1)
    index = table.schema.get_field_index(LOG_WEIGHT)
    return table.set_column(index, pa.field(LOG_WEIGHT, pa.float64(), nullable=False),
                            table.column(LOG_WEIGHT).cast(pa.float64()))


@pytest.mark.ray
@pytest.mark.parametrize("damaged, message", [
    (lambda: _table(1, ids=np.arange(3, 3 + ROWS)),
     r"shard-00001\.parquet: duplicate sample_id 3 \(also in shard-00000\.parquet\)"),
    (_wrong_image_length, r"shard-00001\.parquet: image 0 has 15 bytes, expected 16"),
    (_log_weight_as_float64, r"shard-00001\.parquet: column 'log_weight' has type double, but float in "
                             r"shard-00000\.parquet"),
], ids=["duplicate-ids", "image-length", "mixed-schema"])
def test_bad_resample_inputs_name_the_file(ray_local, tmp_path, damaged, message):
    samples = _write_set(tmp_path / "set")
    _replace_shard(samples, 1, damaged())
    assert verify_sample_set(samples)  # verify and the stage share one definition
    with pytest.raises(ValueError, match=message) as info:
        _resample(samples, tmp_path / "out")
    assert str(samples) in str(info.value) and not (tmp_path / "out").exists()


PLUGIN = "rgm_ray.generate.example_plugin:make"
PLUGIN_ARGS = {"size": 4, "latent": 2}


def _generate(out, seed):
    spec = GenerateSpec(generator=PLUGIN, generator_args=PLUGIN_ARGS, out=str(out), num_samples=6, shard_size=2,
                        seed=seed)
    return spec, generate_sample_set(spec, ClusterOptions(workers=1))


def _hashes(path):
    return {s["file"]: s["sha256"] for s in json.loads((path / MANIFEST_NAME).read_text())["shards"]}


@pytest.mark.ray
def test_a_shard_of_another_seed_is_redrawn_on_resume(ray_local, tmp_path):
    reference = tmp_path / "seed0"
    spec, _ = _generate(reference, seed=0)
    resumed = tmp_path / "resumed"
    shutil.copytree(reference, resumed)
    (resumed / MANIFEST_NAME).unlink()  # an interrupted seed-0 run ...
    other = dataclasses.replace(spec, seed=1).plan()  # ... into which a seed-1 shard is copied
    write_generated_shard(resumed, 1, shard_table(other, 1, Plugin(PLUGIN, PLUGIN_ARGS).draw_shard(other, 1)))
    foreign = pq.read_schema(resumed / "shard-00001.parquet").metadata
    original = pq.read_schema(reference / "shard-00001.parquet").metadata
    assert foreign[META_SOURCE] == original[META_SOURCE] and foreign[META_PLAN] != original[META_PLAN]

    result = generate_sample_set(dataclasses.replace(spec, out=str(resumed)), ClusterOptions(workers=1))
    assert (result.generated_shards, result.redrawn_shards, result.reused_shards) == (1, 1, 2)
    assert "1 of them redrawn" in result.message
    assert _hashes(resumed) == _hashes(reference) and verify_sample_set(resumed) == []
