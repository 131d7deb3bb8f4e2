"""Issue 17, item 5: a sample set opens in the Parquet readers people use, as README "Reading a sample set
elsewhere" shows: pandas, pyarrow, DuckDB, Ray Data and Hugging Face ``datasets``; images decode exactly
from the shape in the schema metadata (``rgm.shape``). Sets written in the old layout (``manifest.json``,
``generation.json``) still verify, read, resume and resample, and a resume moves them to the new one.
"""

from __future__ import annotations

import dataclasses
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.dataset
import pyarrow.parquet as pq
import pytest

from rgm_ray.generate import GenerateSpec, generate_sample_set
from rgm_ray.resample import ResampleConfig, ResampleSpec, resample_sample_set
from rgm_ray.runtime import ClusterOptions
from rgm_ray.store import (MANIFEST_NAME, SampleSet, SampleSetWriter, export_dataset, make_table, manifest_digest,
                           verify_sample_set)
from rgm_ray.store.completion import is_complete, mark_complete
from rgm_ray.store.layout import OLD_NAMES, PLAN_FILE

pytestmark = pytest.mark.ray

SETS = ("real", "weighted", "generated")
OLD_MANIFEST = OLD_NAMES[MANIFEST_NAME]  # manifest.json


def generate(out: Path):
    """40 RGB images of the example plugin in 3 shards (one worker)."""
    spec = GenerateSpec(generator="rgm_ray.generate.example_plugin:make", generator_args={"size": 8, "channels": 3},
                        out=str(out), num_samples=40, shard_size=16, seed=5)
    return generate_sample_set(spec, ClusterOptions(workers=1))


@pytest.fixture(scope="module")
def sets(tmp_path_factory, fmnist_test, ray_local):
    """Three sets as the stages write them, and each one's pixels in id order: 300 Fashion-MNIST test
    images (3 shards), 120 RGB images with ``log_weight`` (2 shards), 40 generated RGB images (3 shards)."""
    root = tmp_path_factory.mktemp("sets")
    real = dataclasses.replace(fmnist_test, images=fmnist_test.images[:300], labels=fmnist_test.labels[:300])
    export_dataset(real, root / "real", shard_size=100)
    rng = np.random.default_rng(17)
    weighted = rng.integers(0, 256, (120, 3, 6, 5), np.uint8)
    log_weights = rng.normal(size=120).astype(np.float32)
    with SampleSetWriter(root / "weighted", source="test:weighted") as writer:
        for rows in (slice(0, 70), slice(70, 120)):
            writer.write(make_table(np.arange(120)[rows], weighted[rows], None, source="test:weighted",
                                    extra={"log_weight": log_weights[rows]}))
    generate(root / "generated")
    return {"real": (root / "real", real.images), "weighted": (root / "weighted", weighted),
            "generated": (root / "generated", SampleSet(root / "generated").read()["image"])}


def rgm_shape(schema) -> tuple[int, ...]:
    """README: the image shape (C, H, W) from the schema metadata."""
    return tuple(int(s) for s in schema.metadata[b"rgm.shape"].split(b","))


def decode(image: bytes, shape: tuple[int, ...]) -> np.ndarray:
    return np.frombuffer(image, np.uint8).reshape(shape)


def test_side_files_are_names_parquet_readers_skip(sets):
    side = {name: sorted(p.name for p in path.iterdir() if p.suffix != ".parquet") for name, (path, _) in sets.items()}
    assert side == {"real": [MANIFEST_NAME], "weighted": [MANIFEST_NAME],
                    "generated": sorted([MANIFEST_NAME, PLAN_FILE])}
    assert all(name.startswith("_") for names in side.values() for name in names)


@pytest.mark.parametrize("name", SETS)
def test_pandas_reads_the_directory(sets, name):
    path, pixels = sets[name]
    frame = pd.read_parquet(path).sort_values("sample_id")
    expected = SampleSet(path).read()
    assert list(frame.columns) == list(SampleSet(path).columns)
    np.testing.assert_array_equal(frame["sample_id"].to_numpy(), expected["sample_id"])
    np.testing.assert_array_equal(frame["label"].to_numpy(), expected["label"])
    shape = rgm_shape(pyarrow.dataset.dataset(path).schema)
    np.testing.assert_array_equal(np.stack([decode(b, shape) for b in frame["image"]]), pixels)


@pytest.mark.parametrize("name", SETS)
def test_pyarrow_dataset_and_read_table_read_the_directory(sets, name):
    path, pixels = sets[name]
    for table in (pyarrow.dataset.dataset(path).to_table(), pq.read_table(path)):
        table = table.sort_by("sample_id")
        assert table.num_rows == len(SampleSet(path)) and rgm_shape(table.schema) == pixels.shape[1:]
        images = np.stack([decode(b, rgm_shape(table.schema)) for b in table.column("image").to_pylist()])
        np.testing.assert_array_equal(images, pixels)  # bit for bit, not merely close
    if name == "weighted":
        np.testing.assert_array_equal(pq.read_table(path).sort_by("sample_id").column("log_weight").to_numpy(),
                                      SampleSet(path).read()["log_weight"])


def test_duckdb_queries_the_shards(sets):
    duckdb = pytest.importorskip("duckdb")
    path, pixels = sets["real"]
    labels = duckdb.sql(f"SELECT label, count(*) AS n FROM read_parquet('{path}/*.parquet') GROUP BY label "
                        "ORDER BY label").fetchall()
    counts = np.bincount(SampleSet(path).read()["label"])
    assert labels == [(label, int(n)) for label, n in enumerate(counts) if n]
    (shape,), = duckdb.sql(f"SELECT DISTINCT decode(value) FROM parquet_kv_metadata('{path}/*.parquet') "
                           "WHERE key = 'rgm.shape'").fetchall()
    (image,), = duckdb.sql(f"SELECT image FROM read_parquet('{path}/*.parquet') WHERE sample_id = 123").fetchall()
    np.testing.assert_array_equal(decode(image, tuple(map(int, shape.split(",")))), pixels[123])
    weighted, _ = sets["weighted"]
    (total,), = duckdb.sql(f"SELECT sum(log_weight) FROM '{weighted}/*.parquet'").fetchall()
    assert total == pytest.approx(float(SampleSet(weighted).read()["log_weight"].astype(np.float64).sum()))


@pytest.mark.parametrize("name", ("real", "generated"))
def test_ray_data_reads_the_directory(ray_local, sets, name):
    path, pixels = sets[name]
    dataset = ray_local.data.read_parquet(str(path))
    assert dataset.count() == len(pixels)
    shape = rgm_shape(pq.read_schema(next(path.glob("*.parquet"))))
    # (the function runs on Ray workers, which cannot import this test module: it uses numpy alone)
    decoded = dataset.map_batches(
        lambda batch: {**batch, "image": np.frombuffer(b"".join(batch["image"]), np.uint8).reshape(-1, *shape)})
    batch = decoded.take_batch(len(pixels))
    np.testing.assert_array_equal(batch["image"][np.argsort(batch["sample_id"])], pixels)


@pytest.mark.parametrize("name", ("real", "weighted"))
def test_hugging_face_dataset_has_image_features(sets, name, tmp_path):
    datasets = pytest.importorskip("datasets")
    from rgm_ray.store import to_hf_dataset

    path, pixels = sets[name]
    dataset = to_hf_dataset(path, cache_dir=tmp_path / "hf")
    assert isinstance(dataset.features["image"], datasets.Image) and len(dataset) == len(pixels)
    assert dataset.features["sample_id"] == datasets.Value("int64")
    first = dataset[7]
    assert first["image"].mode == ("L" if pixels.shape[1] == 1 else "RGB")
    decoded = np.stack([np.asarray(image).reshape(pixels.shape[2], pixels.shape[3], -1).transpose(2, 0, 1)
                        for image in dataset["image"]])
    np.testing.assert_array_equal(decoded, pixels)  # PNG is lossless
    expected = SampleSet(path).read()
    np.testing.assert_array_equal(list(dataset["label"]), expected["label"])
    if name == "weighted":
        np.testing.assert_array_equal(np.asarray(list(dataset["log_weight"]), np.float32), expected["log_weight"])
    assert to_hf_dataset(path, cache_dir=tmp_path / "hf").cache_files == dataset.cache_files  # converted once
    raw = datasets.Dataset.from_parquet(f"{path}/*.parquet", cache_dir=str(tmp_path / "raw"))
    assert raw.features["image"] == datasets.Value("binary") and len(raw) == len(pixels)  # what README says


def test_hugging_face_refuses_images_png_cannot_hold_as_they_are(tmp_path):
    pytest.importorskip("datasets")
    from rgm_ray.store import to_hf_dataset

    with SampleSetWriter(tmp_path / "two", source="test:two") as writer:
        writer.write(make_table(np.arange(3), np.zeros((3, 2, 4, 4), np.uint8), None, source="test:two"))
    with pytest.raises(ValueError, match="two: 2-channel images; a datasets.Image holds 1 or 3 channels"):
        to_hf_dataset(tmp_path / "two", cache_dir=tmp_path / "hf")


def test_the_readme_example_runs_as_written(ray_local, sets, tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    pytest.importorskip("duckdb")
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme[readme.index("### Reading a sample set elsewhere"):readme.index("### Data (offline)")]
    (code,) = re.findall(r"```python\n(.*?)```", section, re.S)
    path, pixels = sets["weighted"]
    code = code.replace('SET = "runs/demo/weights/pixelcnn/weighted"', f"SET = {str(path)!r}")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf")  # not the user's cache
    example: dict = {}
    exec(compile(code, "README.md", "exec"), example)
    assert example["shape"] == pixels.shape[1:] and example["shape_text"] == "3,6,5"
    np.testing.assert_array_equal(example["images"], pixels)  # ids 0..119 in shard order
    np.testing.assert_array_equal(example["first"], pixels[0])
    assert example["counts"] == [(-1, 120)] and len(example["df"]) == 120
    batch = example["batch"]
    np.testing.assert_array_equal(batch["image"], pixels[batch["sample_id"]])
    assert len(batch["sample_id"]) == 16 and batch["log_weight"].dtype == np.float32
    np.testing.assert_array_equal(np.asarray(example["picture"]).transpose(2, 0, 1), pixels[0])


def _old_layout(source: Path, copy: Path) -> Path:
    """A copy of ``source`` with its side files under the names sets had before (as an old run left them)."""
    shutil.copytree(source, copy)
    for name, old in OLD_NAMES.items():
        if (copy / name).exists():
            (copy / name).rename(copy / old)
    return copy


def test_an_old_layout_set_verifies_reads_and_keeps_its_digest(sets, tmp_path):
    path, pixels = sets["weighted"]
    old = _old_layout(path, tmp_path / "old")
    assert sorted(p.name for p in old.iterdir() if p.suffix != ".parquet") == [OLD_MANIFEST]
    assert verify_sample_set(old) == []
    np.testing.assert_array_equal(SampleSet(old).check(["log_weight"]).read()["image"], pixels)
    assert manifest_digest(old) == manifest_digest(path)  # what _complete.json and evaluate's inputs record
    (old / "shard-00001.parquet").unlink()
    assert [str(p) for p in verify_sample_set(old)] == [f"shard-00001.parquet: listed in {MANIFEST_NAME} but missing"]
    (old / OLD_MANIFEST).unlink()
    assert [p.file for p in verify_sample_set(old)] == [MANIFEST_NAME]  # a missing manifest: the new name


def test_a_finished_output_recorded_with_an_old_layout_set_stays_finished(sets, tmp_path):
    out = tmp_path / "weigh"
    shutil.copytree(sets["weighted"][0], out / "weighted")
    mark_complete(out, "weigh", ["weighted"])
    (out / "weighted" / MANIFEST_NAME).rename(out / "weighted" / OLD_MANIFEST)
    assert is_complete(out, "weigh")


def test_an_old_layout_set_resamples(ray_local, sets, tmp_path):
    old = _old_layout(sets["weighted"][0], tmp_path / "old")
    config = ResampleConfig(k=30, seed=3, alpha=1.0)
    resample_sample_set(ResampleSpec(str(old), str(tmp_path / "new"), config))
    resample_sample_set(ResampleSpec(str(sets["weighted"][0]), str(tmp_path / "reference"), config))
    assert verify_sample_set(tmp_path / "new") == [] and (tmp_path / "new" / MANIFEST_NAME).is_file()
    assert ([p.read_bytes() for p in sorted((tmp_path / "new").glob("*.parquet"))]
            == [p.read_bytes() for p in sorted((tmp_path / "reference").glob("*.parquet"))])
    assert len(pd.read_parquet(tmp_path / "new")) == 30


def test_resuming_an_old_layout_generated_set_moves_it_to_the_new_layout(ray_local, sets, tmp_path):
    path, pixels = sets["generated"]
    shards = {p.name: p.read_bytes() for p in path.glob("*.parquet")}
    finished = _old_layout(path, tmp_path / "finished")
    unfinished = _old_layout(path, tmp_path / "unfinished")
    (unfinished / OLD_MANIFEST).unlink()
    (unfinished / "shard-00001.parquet").unlink()  # as a run killed mid-way left it
    assert len(SampleSet(finished)) == len(pixels)
    for out, drawn in ((finished, 0), (unfinished, 1)):
        result = generate(out)
        assert result.generated_shards == drawn and result.reused_shards == 3 - drawn
        assert sorted(p.name for p in out.iterdir() if p.suffix != ".parquet") == sorted([MANIFEST_NAME, PLAN_FILE])
        assert {p.name: p.read_bytes() for p in out.glob("*.parquet")} == shards
        assert verify_sample_set(out) == [] and len(pd.read_parquet(out)) == len(pixels)
    assert manifest_digest(finished) == manifest_digest(path)  # a finished set is renamed, not rewritten
