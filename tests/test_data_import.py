"""``rgm data import``: PNG/JPEG folders, .npy/.npz arrays and Parquet image columns become verified sets
with exactly the input's images in the input's order; bad inputs are refused by name, writing nothing."""

import hashlib
import io
import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from rgm_ray.cli.main import main
from rgm_ray.store import ImportSpec, SampleSet, import_samples, verify_sample_set
from rgm_ray.weigh.inputs import sample_set_pool


def _pil(image: np.ndarray) -> Image.Image:
    """uint8 [C, H, W] -> a Pillow image (L or RGB)."""
    return Image.fromarray(image[0] if image.shape[0] == 1 else image.transpose(1, 2, 0))


def _png_bytes(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    _pil(image).save(buffer, format="PNG")
    return buffer.getvalue()


def _png_folder(folder, images, names=None):
    folder.mkdir()
    for i, image in enumerate(images):
        _pil(image).save(folder / (names[i] if names else f"img_{i:03d}.png"))
    return folder


def _imported(out):
    """The set at ``out``, checked intact and unlabeled; (images, manifest info['import'], set)."""
    assert verify_sample_set(out) == []
    samples = SampleSet(out)
    whole = samples.read()
    np.testing.assert_array_equal(whole["sample_id"], np.arange(len(samples)))
    assert (whole["label"] == -1).all()
    return whole["image"], samples.manifest.info["import"], samples


def _rgb(rng, n=7, shape=(3, 9, 6)):
    return rng.integers(0, 256, (n, *shape), dtype=np.uint8)


def test_png_folder_round_trip(tmp_path, fmnist_test):
    images = fmnist_test.images[:23]
    folder = _png_folder(tmp_path / "pngs", images)
    result = import_samples(ImportSpec(source=str(folder), out=str(tmp_path / "set"), shard_size=10))
    got, info, samples = _imported(tmp_path / "set")
    np.testing.assert_array_equal(got, images)
    assert (result.kind, result.num_samples, result.shards, result.shape) == ("images", 23, 3, (1, 28, 28))
    assert info["names"] == {"template": "img_{:03d}.png", "first": 0}
    assert info["path"] == str(folder.resolve()) and info["conversions"] == []
    # the content hash is sha256sum's output over the sorted names, hashed again
    listing = "".join(f"{hashlib.sha256((folder / name).read_bytes()).hexdigest()}  {name}\n"
                      for name in sorted(os.listdir(folder)))
    assert info["sha256"] == hashlib.sha256(listing.encode()).hexdigest()
    assert samples.source == result.source == f"import:images:sha256:{info['sha256']}"


def test_rgb_folder_sorted_names_and_jpeg(tmp_path, rng):
    images = _rgb(rng, 3)
    folder = _png_folder(tmp_path / "rgb", images, names=["cat.png", "apple.png", "bird.png"])
    _pil(images[0]).save(folder / "zebra.jpg", quality=90)  # lossy: compared with Pillow's own decoding
    import_samples(ImportSpec(source=str(folder), out=str(tmp_path / "set")))
    got, info, _ = _imported(tmp_path / "set")
    assert info["names"] == ["apple.png", "bird.png", "cat.png", "zebra.jpg"]
    np.testing.assert_array_equal(got[:3], images[[1, 2, 0]])
    np.testing.assert_array_equal(got[3], np.asarray(Image.open(folder / "zebra.jpg")).transpose(2, 0, 1))


@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
def test_npz_both_layouts_detected(tmp_path, fmnist_test, layout):
    images = fmnist_test.images[:12]
    stored = images if layout == "nchw" else images.transpose(0, 2, 3, 1)
    np.savez(tmp_path / "x.npz", samples=stored)
    result = import_samples(ImportSpec(source=str(tmp_path / "x.npz"), out=str(tmp_path / "set"), shard_size=5))
    got, info, _ = _imported(tmp_path / "set")
    np.testing.assert_array_equal(got, images)
    assert (result.kind, info["layout"], info["array"]) == ("npz", layout, "samples")
    assert info["sha256"] == hashlib.sha256((tmp_path / "x.npz").read_bytes()).hexdigest()


def test_npy_and_named_npz_array(tmp_path, rng):
    images = _rgb(rng)
    np.save(tmp_path / "x.npy", images)
    import_samples(ImportSpec(source=str(tmp_path / "x.npy"), out=str(tmp_path / "npy")))
    got, info, samples = _imported(tmp_path / "npy")
    np.testing.assert_array_equal(got, images)
    assert samples.source.startswith("import:npy:sha256:") and info["layout"] == "nchw"

    np.savez(tmp_path / "two.npz", other=images[:2], wanted=images.transpose(0, 2, 3, 1))
    import_samples(ImportSpec(source=str(tmp_path / "two.npz"), out=str(tmp_path / "npz"), array="wanted"))
    np.testing.assert_array_equal(_imported(tmp_path / "npz")[0], images)


def test_parquet_raw_encoded_and_struct_columns(tmp_path, fmnist_test, rng):
    gray, colour = fmnist_test.images[:9], _rgb(rng)
    pq.write_table(pa.table({"image": pa.array([im.tobytes() for im in gray], pa.binary()),
                             "note": list(range(9))}), tmp_path / "raw.parquet", row_group_size=4)
    import_samples(ImportSpec(source=str(tmp_path / "raw.parquet"), out=str(tmp_path / "raw"), shape=(1, 28, 28),
                              shard_size=4))
    got, info, _ = _imported(tmp_path / "raw")
    np.testing.assert_array_equal(got, gray)
    assert info["encoding"] == "raw CHW"

    pq.write_table(pa.table({"image": [_png_bytes(im) for im in colour]}), tmp_path / "png.parquet")
    import_samples(ImportSpec(source=str(tmp_path / "png.parquet"), out=str(tmp_path / "png")))
    np.testing.assert_array_equal(_imported(tmp_path / "png")[0], colour)

    hf = pa.array([{"bytes": _png_bytes(im), "path": f"{i}.png"} for i, im in enumerate(gray)],
                  pa.struct([("bytes", pa.binary()), ("path", pa.string())]))
    pq.write_table(pa.table({"img": hf}), tmp_path / "hf.parquet")
    import_samples(ImportSpec(source=str(tmp_path / "hf.parquet"), out=str(tmp_path / "hf"), image_column="img"))
    np.testing.assert_array_equal(_imported(tmp_path / "hf")[0], gray)


class _RunsCodeWhenUnpickled:
    """Unpickling this would create a directory: an import must never get that far."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def _mixed_sizes(d, rng):
    _png_folder(d / "in", [np.zeros((1, 8, 8), np.uint8)], names=["a.png"])
    for name in ("b.png", "c.png"):
        _pil(np.zeros((1, 6, 8), np.uint8)).save(d / "in" / name)
    return {"source": "in"}, ["b.png", "6x8", "8x8", "--resize"]


def _mixed_modes(d, rng):
    _png_folder(d / "in", [np.zeros((1, 8, 8), np.uint8), _rgb(rng, 1, (3, 8, 8))[0]], names=["a.png", "b.png"])
    return {"source": "in"}, ["b.png", "mode RGB", "--grayscale"]


def _non_image(d, rng):
    _png_folder(d / "in", [np.zeros((1, 8, 8), np.uint8)] * 2, names=["a.png", "c.png"])
    (d / "in" / "b.txt").write_text("not an image")
    return {"source": "in"}, ["b.txt", "not a PNG or JPEG"]


def _float_array(d, rng):
    np.save(d / "in.npy", rng.random((4, 1, 8, 8)).astype(np.float32))
    return {"source": "in.npy"}, ["in.npy", "float32", "uint8", "np.rint(a * 255)"]


def _ambiguous_layout(d, rng):
    np.save(d / "in.npy", np.zeros((4, 3, 8, 3), np.uint8))
    return {"source": "in.npy"}, ["in.npy", "NCHW or NHWC", "--layout"]


def _pickled_objects(d, rng):
    np.save(d / "in.npy", np.array([_RunsCodeWhenUnpickled(d / "unpickled")], dtype=object), allow_pickle=True)
    return {"source": "in.npy"}, ["in.npy", "never unpickles"]


def _three_dims(d, rng):
    np.savez(d / "in.npz", x=np.zeros((4, 8, 8), np.uint8))
    return {"source": "in.npz"}, ["in.npz", "'x'", "a[:, None]"]


def _several_arrays(d, rng):
    np.savez(d / "in.npz", a=np.zeros((4, 1, 8, 8), np.uint8), b=np.zeros((4, 1, 8, 8), np.uint8))
    return {"source": "in.npz"}, ["in.npz", "--array"]


def _raw_wrong_length(d, rng):
    pq.write_table(pa.table({"image": [bytes(64), bytes(63)]}), d / "in.parquet")
    return {"source": "in.parquet", "shape": (1, 8, 8)}, ["in.parquet row 1", "63 bytes", "expected 64"]


def _missing_column(d, rng):
    pq.write_table(pa.table({"pixels": [bytes(64)]}), d / "in.parquet")
    return {"source": "in.parquet"}, ["in.parquet", "'image'", "pixels", "--image-column"]


BAD_INPUTS = {"mixed sizes": _mixed_sizes, "mixed modes": _mixed_modes, "non-image file": _non_image,
              "float array": _float_array, "ambiguous layout": _ambiguous_layout,
              "pickled objects": _pickled_objects, "3-dim array": _three_dims, "several arrays": _several_arrays,
              "raw bytes of the wrong length": _raw_wrong_length, "no image column": _missing_column}


@pytest.mark.parametrize("make", BAD_INPUTS.values(), ids=BAD_INPUTS.keys())
def test_bad_inputs_are_refused_by_name_and_write_nothing(tmp_path, rng, make):
    spec, fragments = make(tmp_path, rng)
    before = set(os.listdir(tmp_path))
    with pytest.raises(ValueError) as info:
        import_samples(ImportSpec(**{**spec, "source": str(tmp_path / spec["source"])}, out=str(tmp_path / "set"),
                                  shard_size=1))
    for fragment in fragments:
        assert fragment in str(info.value)
    assert "c.png" not in str(info.value)  # the first bad file is named, not a later one
    assert set(os.listdir(tmp_path)) == before  # no set, no temporary directory, nothing unpickled


def test_conversions_apply_to_all_and_are_recorded(tmp_path, rng):
    mixed = [_rgb(rng, 1, (3, 10, 12))[0], np.full((1, 7, 5), 200, np.uint8), _rgb(rng, 1, (3, 10, 12))[0]]
    folder = _png_folder(tmp_path / "mixed", mixed)
    result = import_samples(ImportSpec(source=str(folder), out=str(tmp_path / "set"), resize=(8, 6), grayscale=True))
    got, info, _ = _imported(tmp_path / "set")
    expected = [np.asarray(_pil(im).convert("L").resize((6, 8), Image.Resampling.BICUBIC))[None] for im in mixed]
    np.testing.assert_array_equal(got, np.stack(expected))
    assert result.shape == (1, 8, 6) and len(info["conversions"]) == 2
    assert any("grayscale" in c for c in info["conversions"]) and any("8x6" in c for c in info["conversions"])
    assert "converted" in result.message

    colour = _rgb(rng)
    np.save(tmp_path / "rgb.npy", colour)
    import_samples(ImportSpec(source=str(tmp_path / "rgb.npy"), out=str(tmp_path / "gray"), grayscale=True))
    expected = np.stack([np.asarray(_pil(im).convert("L"))[None] for im in colour])
    np.testing.assert_array_equal(_imported(tmp_path / "gray")[0], expected)


def test_flags_for_another_kind_of_input_are_refused(tmp_path, rng):
    folder = _png_folder(tmp_path / "in", _rgb(rng, 2))
    with pytest.raises(ValueError, match="--shape, --image-column does not apply"):
        import_samples(ImportSpec(source=str(folder), out=str(tmp_path / "set"), shape=(3, 9, 6), image_column="x"))
    with pytest.raises(ValueError, match="overlaps the input"):
        import_samples(ImportSpec(source=str(folder), out=str(folder / "set")))


def test_imported_set_is_a_normal_set_and_reimport_is_byte_identical(tmp_path, fmnist_test):
    images = fmnist_test.images[:20]
    np.save(tmp_path / "x.npy", images)
    for name in ("a", "b"):
        import_samples(ImportSpec(source=str(tmp_path / "x.npy"), out=str(tmp_path / name), shard_size=8))
    first, second = SampleSet(tmp_path / "a"), SampleSet(tmp_path / "b")
    assert [s.sha256 for s in first.manifest.shards] == [s.sha256 for s in second.manifest.shards]
    pool = sample_set_pool(first, "imported")
    assert pool.shape == (1, 28, 28) and pool.dataset is None
    np.testing.assert_array_equal(pool.ids, np.arange(20))
    np.testing.assert_array_equal(pool.fetch(np.array([17, 3, 9])), images[[17, 3, 9]])


def test_cli_import(tmp_path, fmnist_test, capsys):
    folder = _png_folder(tmp_path / "pngs", fmnist_test.images[:6])
    out = tmp_path / "set"
    argv = ["data", "import", str(folder), "--out", str(out), "--shard-size", "4", "--no-mlflow"]
    assert main([*argv, "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["num_samples"] == 6 and summary["shards"] == 2 and summary["shape"] == [1, 28, 28]
    np.testing.assert_array_equal(_imported(out)[0], fmnist_test.images[:6])
    assert main(argv) == 2 and "--overwrite" in capsys.readouterr().err
    assert main([*argv, "--overwrite", "--resize", "14,14"]) == 0
    assert "converted: resize: 14x14" in capsys.readouterr().out
    (folder / "notes.md").write_text("x")
    assert main([*argv, "--overwrite"]) == 2
    err = capsys.readouterr().err
    # one error line (the progress lines before it are the import's, written as stderr is no terminal)
    assert [line for line in err.splitlines() if "error" in line] == [line for line in err.splitlines()
                                                                      if "notes.md: not a PNG or JPEG image" in line]
    assert "notes.md: not a PNG or JPEG image" in err.splitlines()[-1]
    assert SampleSet(out).shape == (1, 14, 14)  # the failed run left the previous set untouched
