import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from rgm_ray.store import (MANIFEST_NAME, ArtefactExistsError, ManifestError, SampleSet, SampleSetWriter,
                           decode_images, export_dataset, finish_sample_set, make_table,
                           verify_sample_set, write_shard)
from rgm_ray.store.manifest import provenance
from rgm_ray.store.schema import parse_shape


def _images(rng, n, shape=(3, 4, 5)):
    return rng.integers(0, 256, (n, *shape), dtype=np.uint8)


def _write_set(path, rng, sizes=(7, 5, 9), shape=(3, 4, 5), **kw):
    images = _images(rng, sum(sizes), shape)
    with SampleSetWriter(path, source="test", **kw) as writer:
        start = 0
        for size in sizes:
            writer.write(make_table(np.arange(start, start + size) * 3 + 11, images[start:start + size],
                                    None, source="test"))
            start += size
    return images


def test_round_trip_bytes_in_equal_bytes_out(tmp_path, rng):
    images = _write_set(tmp_path / "s", rng)
    ss = SampleSet(tmp_path / "s")
    assert len(ss) == 21 and ss.shape == (3, 4, 5) and ss.source == "test"
    whole = ss.read()
    np.testing.assert_array_equal(whole["image"], images)
    np.testing.assert_array_equal(whole["sample_id"], np.arange(21) * 3 + 11)
    assert (whole["label"] == -1).all()
    batches = list(ss.iter_batches(batch_size=4))
    assert max(len(b["sample_id"]) for b in batches) == 4
    np.testing.assert_array_equal(np.concatenate([b["image"] for b in batches]), images)
    torch_images, torch_labels = next(ss.iter_torch(batch_size=6))
    assert tuple(torch_images.shape) == (6, 3, 4, 5) and str(torch_images.dtype) == "torch.uint8"
    assert verify_sample_set(tmp_path / "s") == []


def test_extra_columns_and_schema_metadata(tmp_path, rng):
    table = make_table(np.arange(3), _images(rng, 3), np.array([1, 2, 3]), source="src",
                       extra={"log_weight": np.array([0.5, -1.0, 2.0])})
    assert table.schema.field("log_weight").type == "float"
    assert table.schema.metadata[b"rgm.shape"] == b"3,4,5"
    with SampleSetWriter(tmp_path / "w", source="src") as writer:
        writer.write(table)
    ss = SampleSet(tmp_path / "w")
    assert "log_weight" in ss.columns
    np.testing.assert_allclose(ss.read(["log_weight"])["log_weight"], [0.5, -1.0, 2.0])
    with pytest.raises(ValueError, match="no column"):
        ss.read(["copies"])


def test_make_table_validates(rng):
    with pytest.raises(ValueError, match="uint8"):
        make_table(np.arange(2), np.zeros((2, 1, 2, 2), np.float32), None, source="x")
    with pytest.raises(ValueError, match="3 images but 2 ids"):
        make_table(np.arange(2), _images(rng, 3), None, source="x")


def test_decode_rejects_wrong_length(rng):
    table = make_table(np.arange(2), _images(rng, 2, (1, 2, 2)), None, source="x")
    with pytest.raises(ValueError, match="expected 9"):
        decode_images(table.column("image"), (1, 3, 3))


@pytest.mark.parametrize("text", ["1,28", "a,b,c", "0,2,2", ""])
def test_parse_shape_rejects(text):
    with pytest.raises(ValueError):
        parse_shape(text)


def test_failed_write_leaves_nothing(tmp_path, rng):
    with pytest.raises(RuntimeError):
        with SampleSetWriter(tmp_path / "s", source="t") as writer:
            writer.write(make_table(np.arange(2), _images(rng, 2), None, source="t"))
            raise RuntimeError("crash mid-write")
    assert list(tmp_path.iterdir()) == []


def test_finished_set_never_silently_overwritten(tmp_path, rng):
    original = _write_set(tmp_path / "s", rng)
    with pytest.raises(ArtefactExistsError, match="--overwrite"):
        _write_set(tmp_path / "s", rng)
    # a failing overwrite keeps the old set intact
    with pytest.raises(RuntimeError):
        with SampleSetWriter(tmp_path / "s", source="t", overwrite=True):
            raise RuntimeError("boom")
    np.testing.assert_array_equal(SampleSet(tmp_path / "s").read()["image"], original)
    replaced = _write_set(tmp_path / "s", rng, sizes=(2,), overwrite=True)
    np.testing.assert_array_equal(SampleSet(tmp_path / "s").read()["image"], replaced)
    assert [p.name for p in tmp_path.iterdir()] == ["s"]  # no temp leftovers


def test_writer_rejects_duplicate_ids_and_mixed_schemas(tmp_path, rng):
    with pytest.raises(ValueError, match="duplicate"):
        with SampleSetWriter(tmp_path / "d", source="t") as writer:
            writer.write(make_table(np.arange(3), _images(rng, 3), None, source="t"))
            writer.write(make_table(np.arange(2, 4), _images(rng, 2), None, source="t"))
    with pytest.raises(ValueError, match="schema"):
        with SampleSetWriter(tmp_path / "m", source="t") as writer:
            writer.write(make_table(np.arange(3), _images(rng, 3), None, source="t"))
            writer.write(make_table(np.arange(3, 5), _images(rng, 2, (1, 4, 5)), None, source="t"))
    assert not (tmp_path / "d").exists() and not (tmp_path / "m").exists()


def _only_problem_files(path):
    return sorted({p.file for p in verify_sample_set(path)})


def test_verify_truncated_shard(tmp_path, rng):
    _write_set(tmp_path / "s", rng)
    shard = tmp_path / "s" / "shard-00001.parquet"
    shard.write_bytes(shard.read_bytes()[:-40])
    problems = verify_sample_set(tmp_path / "s")
    assert _only_problem_files(tmp_path / "s") == ["shard-00001.parquet"]
    assert any("SHA-256" in p.message for p in problems)
    assert any("not readable" in p.message for p in problems)


def test_verify_corrupted_shard(tmp_path, rng):
    _write_set(tmp_path / "s", rng)
    shard = tmp_path / "s" / "shard-00002.parquet"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    assert _only_problem_files(tmp_path / "s") == ["shard-00002.parquet"]


def test_verify_missing_and_extra_shards(tmp_path, rng):
    _write_set(tmp_path / "s", rng)
    (tmp_path / "s" / "shard-00000.parquet").unlink()
    table = make_table(np.arange(1000, 1002), _images(rng, 2), None, source="test")
    pq.write_table(table, tmp_path / "s" / "shard-00099.parquet")
    problems = verify_sample_set(tmp_path / "s")
    messages = {p.file: p.message for p in problems}
    assert "missing" in messages["shard-00000.parquet"]
    assert "not listed" in messages["shard-00099.parquet"]
    with pytest.raises(FileNotFoundError, match="shard-00000"):
        SampleSet(tmp_path / "s")


def test_verify_duplicate_ids_across_shards(tmp_path, rng):
    out = tmp_path / "dup"
    out.mkdir()
    shards = [write_shard(out, 0, make_table(np.arange(0, 4), _images(rng, 4), None, source="t")),
              write_shard(out, 1, make_table(np.arange(3, 6), _images(rng, 3), None, source="t"))]
    finish_sample_set(out, shards, shape=(3, 4, 5), source="t", columns=["sample_id", "image", "label"],
                      prov=provenance("test"))
    problems = verify_sample_set(out)
    assert [str(p) for p in problems] == ["shard-00001.parquet: duplicate sample_id 3 (also in shard-00000.parquet)"]


def test_verify_wrong_shape_and_row_count(tmp_path, rng):
    _write_set(tmp_path / "s", rng)
    manifest_path = tmp_path / "s" / MANIFEST_NAME
    raw = json.loads(manifest_path.read_text())
    raw["shards"][0]["rows"] += 1
    raw["num_rows"] += 1
    raw["shape"] = "3,5,4"
    manifest_path.write_text(json.dumps(raw))
    messages = [str(p) for p in verify_sample_set(tmp_path / "s")]
    assert any(f"shard-00000.parquet: 7 rows, {MANIFEST_NAME} says 8" in m for m in messages)
    assert any("!= manifest shape" in m for m in messages)


def test_verify_missing_or_malformed_manifest(tmp_path, rng):
    _write_set(tmp_path / "s", rng)
    manifest_path = tmp_path / "s" / MANIFEST_NAME
    manifest_path.write_text("{not json")
    assert "malformed" in verify_sample_set(tmp_path / "s")[0].message
    manifest_path.unlink()
    [problem] = verify_sample_set(tmp_path / "s")
    assert problem.file == MANIFEST_NAME and "missing" in problem.message
    with pytest.raises(ManifestError):
        SampleSet(tmp_path / "s")


def test_export_fashion_mnist_test_split(tmp_path, fmnist_test):
    manifest = export_dataset(fmnist_test, tmp_path / "fm", shard_size=4000)
    assert manifest.num_rows == 10000 and [s.rows for s in manifest.shards] == [4000, 4000, 2000]
    ss = SampleSet(tmp_path / "fm")
    data = ss.read()
    np.testing.assert_array_equal(data["sample_id"], np.arange(10000))
    np.testing.assert_array_equal(data["image"], fmnist_test.images)
    np.testing.assert_array_equal(data["label"], fmnist_test.labels)
    schema = pq.read_schema(ss.shard_paths[0])
    assert schema.metadata[b"rgm.shape"] == b"1,28,28"
    assert schema.metadata[b"rgm.source"] == b"dataset:fashion-mnist/test"
