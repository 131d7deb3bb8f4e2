"""``rgm data import``: samples made anywhere become a sample set, so any generator can be weighed.

Likelihood-free importance weighting needs nothing from a generator but its images, so a folder of
PNG/JPEG files, a ``.npy``/``.npz`` array or a Parquet image column is enough to run ``weigh``,
``resample``, ``evaluate`` and ``ssl`` on it. The import is strict because silent guesses would change
the images: every image must already have one shape and mode (the first file that differs is named)
unless a conversion (``resize`` / ``grayscale``) is asked for, which is then applied to every image
and recorded. Arrays are loaded with ``allow_pickle=False``: an input file is never unpickled.

The set is an ordinary one: ``label`` = -1, source ``import:<kind>:sha256:<content hash>`` and, in the
manifest's ``info["import"]``, the source path, its hash, the conversions and where each id came from.
The content hash is the file's SHA-256, or for a folder the SHA-256 of ``sha256sum``'s output over
the sorted file names (``<sha256>  <name>\\n`` per file), so it can be checked with standard tools.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from PIL import Image, UnidentifiedImageError

from rgm_ray.results import StageResult
from rgm_ray.store.atomic import sha256_file
from rgm_ray.store.completion import check_not_inside
from rgm_ray.store.export import DEFAULT_SHARD_SIZE
from rgm_ray.store.lock import output_lock
from rgm_ray.store.manifest import provenance
from rgm_ray.store.schema import Shape, decode_images, format_shape, make_table
from rgm_ray.store.writer import SampleSetWriter

KIND_IMAGES, KIND_NPY, KIND_NPZ, KIND_PARQUET = "images", "npy", "npz", "parquet"
ARRAY_SUFFIXES = (".npy", ".npz")
PARQUET_SUFFIXES = (".parquet", ".pq")
DEFAULT_IMAGE_COLUMN = "image"
LAYOUT_CHANNEL_AXIS = {"nchw": 1, "nhwc": 3}
CHANNELS = (1, 3)
MODE_CHANNELS = {"L": 1, "RGB": 3}  # Pillow modes imported as they are
PIL_FORMATS = ("PNG", "JPEG")
RESIZE_FILTER = Image.Resampling.BICUBIC


@dataclass(frozen=True)
class ImportSpec:
    """What to import: ``source`` (folder, ``.npy``/``.npz`` or Parquet file) into the set ``out``."""

    source: str
    out: str
    layout: str | None = None  # arrays: "nchw" | "nhwc"; None = detect from the channel axis
    array: str | None = None  # .npz: which array (None: the only one)
    shape: Shape | None = None  # Parquet raw bytes: C,H,W (CHW order); None = PNG/JPEG-encoded bytes
    resize: tuple[int, int] | None = None  # (H, W) every image is resized to (Pillow bicubic)
    grayscale: bool = False  # convert every image to one channel (Pillow "L")
    image_column: str | None = None  # Parquet: the image column (None: "image")
    shard_size: int = DEFAULT_SHARD_SIZE

    def __post_init__(self) -> None:
        if self.layout not in (None, *LAYOUT_CHANNEL_AXIS):
            raise ValueError(f"layout must be one of {', '.join(LAYOUT_CHANNEL_AXIS)}, got {self.layout!r}")
        if isinstance(self.shard_size, bool) or not isinstance(self.shard_size, int) or self.shard_size <= 0:
            raise ValueError(f"shard_size must be a positive int, got {self.shard_size!r}")
        if self.resize is not None and not _positive_ints(self.resize, 2):
            raise ValueError(f"resize must be (H, W) with positive integers, got {self.resize!r}")
        if self.shape is not None and not (_positive_ints(self.shape, 3) and self.shape[0] in CHANNELS):
            raise ValueError(f"shape must be (C, H, W) with C in {CHANNELS} and positive H, W, got {self.shape!r}")


@dataclass(frozen=True)
class ImportResult(StageResult):
    kind: str = ""  # "images" | "npy" | "npz" | "parquet"
    num_samples: int = 0
    shards: int = 0
    shape: Shape = (0, 0, 0)
    source: str = ""  # the set's source: import:<kind>:sha256:<content hash>
    conversions: tuple[str, ...] = ()

    @property
    def message(self) -> str:
        converted = f", converted: {'; '.join(self.conversions)}" if self.conversions else ""
        return (f"{self.out}: {self.num_samples} images of shape {format_shape(self.shape)} imported from "
                f"{self.kind} ({self.shards} shard{'s' if self.shards != 1 else ''}){converted}")


@dataclass(frozen=True)
class _Source:
    """An opened input: ``read(start, stop)`` gives its images [start, stop) as uint8 [n, C, H, W]."""

    kind: str
    sha256: str
    count: int
    info: dict[str, Any]  # where the ids came from (file names, array, layout, column, encoding)
    read: Callable[[int, int], np.ndarray]


def import_samples(spec: ImportSpec, *, overwrite: bool = False, command: str | None = None,
                   progress: Callable[[range], Iterable[int]] | None = None) -> ImportResult:
    """Write ``spec.source``'s images as the sample set ``spec.out`` (ids 0..n-1 in input order)."""
    path = Path(spec.source)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder")
    check_not_inside(spec.out, [path])
    with output_lock(spec.out, command=command):
        rules = _ImageRules(spec.resize, spec.grayscale)
        opened = _open(path, spec, rules)
        if opened.count == 0:
            raise ValueError(f"{path}: no images to import")
        source, conversions = f"import:{opened.kind}:sha256:{opened.sha256}", rules.describe()
        facts = {"path": str(path.resolve()), "kind": opened.kind, "sha256": opened.sha256,
                 "conversions": conversions, **opened.info}
        starts = range(0, opened.count, spec.shard_size)
        with SampleSetWriter(spec.out, source=source, overwrite=overwrite, prov=provenance(command),
                             info={"import": facts}) as writer:
            for start in (progress(starts) if progress else starts):
                stop = min(start + spec.shard_size, opened.count)
                writer.write(make_table(np.arange(start, stop), opened.read(start, stop), None, source=source))
        manifest = writer.manifest
        assert manifest is not None
        return ImportResult(out=spec.out, kind=opened.kind, num_samples=manifest.num_rows, shards=len(manifest.shards),
                            shape=manifest.shape, source=source, conversions=tuple(conversions))


def _open(path: Path, spec: ImportSpec, rules: _ImageRules) -> _Source:
    if path.is_dir():
        family, opener = "a folder of images", _open_folder
    elif path.suffix.lower() in ARRAY_SUFFIXES:
        family, opener = "an array file", _open_array
    elif path.suffix.lower() in PARQUET_SUFFIXES:
        family, opener = "a Parquet file", _open_parquet
    else:
        raise ValueError(f"{path}: expected a folder of PNG/JPEG files, a .npy/.npz array or a .parquet file")
    misplaced = [flag for flag, value, applies in (("--layout", spec.layout, _open_array),
                                                   ("--array", spec.array, _open_array),
                                                   ("--shape", spec.shape, _open_parquet),
                                                   ("--image-column", spec.image_column, _open_parquet))
                 if value is not None and opener is not applies]
    if misplaced:
        raise ValueError(f"{path}: {', '.join(misplaced)} does not apply to {family}")
    return opener(path, spec, rules)


class _ImageRules:
    """Decoded images -> uint8 CHW, all of one mode and size unless a conversion says otherwise."""

    def __init__(self, resize: tuple[int, int] | None, grayscale: bool) -> None:
        self.resize, self.grayscale = resize, grayscale
        self._first: tuple[str, str, tuple[int, int]] | None = None  # name, mode, (W, H) of the first image

    def describe(self) -> list[str]:
        done = ["grayscale: Pillow convert('L') (ITU-R 601-2 luma)"] if self.grayscale else []
        if self.resize is not None:
            done.append(f"resize: {self.resize[0]}x{self.resize[1]} (HxW), Pillow {RESIZE_FILTER.name.lower()}")
        return done

    def to_array(self, name: str, image: Image.Image) -> np.ndarray:
        """``image`` checked against the first one, converted, as uint8 [C, H, W]."""
        self._check(name, image)
        if self.grayscale:
            image = image.convert("L")
        if self.resize is not None:
            image = image.resize((self.resize[1], self.resize[0]), RESIZE_FILTER)
        pixels = np.asarray(image, dtype=np.uint8)
        return pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)

    def convert_arrays(self, images: np.ndarray, name: Callable[[int], str]) -> np.ndarray:
        """uint8 [n, C, H, W] through the conversions (unchanged when none is asked for)."""
        if not self.grayscale and self.resize is None:
            return images
        return np.stack([self.to_array(name(i), Image.fromarray(image[0] if image.shape[0] == 1
                                                                else image.transpose(1, 2, 0)))
                         for i, image in enumerate(images)])

    def _check(self, name: str, image: Image.Image) -> None:
        if not self.grayscale and image.mode not in MODE_CHANNELS:
            raise ValueError(f"{name}: Pillow mode {image.mode}; only L (grayscale) and RGB images are imported "
                             "as they are (pass --grayscale to convert every image to one channel)")
        if self._first is None:
            self._first = (name, image.mode, image.size)
            return
        first, mode, (width, height) = self._first
        if not self.grayscale and image.mode != mode:
            raise ValueError(f"{name}: mode {image.mode}, but the first image {first} is {mode}; all images must "
                             "share one mode (or pass --grayscale)")
        if self.resize is None and image.size != (width, height):
            raise ValueError(f"{name}: {image.height}x{image.width} pixels, but the first image {first} is "
                             f"{height}x{width}; all images must share one size (or pass --resize H,W)")


def _decode(name: str, data: bytes) -> Image.Image:
    """PNG/JPEG bytes -> a loaded Pillow image; anything else is refused naming ``name``."""
    try:
        image = Image.open(io.BytesIO(data), formats=PIL_FORMATS)
        image.load()
    except UnidentifiedImageError as exc:
        raise ValueError(f"{name}: not a PNG or JPEG image") from exc
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise ValueError(f"{name}: damaged PNG/JPEG image ({exc})") from exc
    return image


def _open_folder(folder: Path, spec: ImportSpec, rules: _ImageRules) -> _Source:
    files = sorted(folder.iterdir(), key=lambda p: p.name)
    for path in files:
        if not path.is_file():
            raise ValueError(f"{path}: a subfolder; a folder import reads PNG/JPEG files only")
    digests = [sha256_file(path) for path in files]
    listing = "".join(f"{digest}  {path.name}\n" for digest, path in zip(digests, files))

    def read(start: int, stop: int) -> np.ndarray:
        images = []
        for path, digest in zip(files[start:stop], digests[start:stop]):
            data = path.read_bytes()
            if hashlib.sha256(data).hexdigest() != digest:
                raise ValueError(f"{path}: changed while being imported")
            images.append(rules.to_array(str(path), _decode(str(path), data)))
        return np.stack(images)

    return _Source(KIND_IMAGES, hashlib.sha256(listing.encode()).hexdigest(), len(files),
                   {"names": _compact_names([path.name for path in files])}, read)


def _compact_names(names: list[str]) -> list[str] | dict[str, Any]:
    """File names in id order, or ``{"template", "first"}`` when they are numbered
    (the name of id i is ``template.format(first + i)``)."""
    match = re.fullmatch(r"(.*?)(\d+)(\D*)", names[0]) if names else None
    if match:
        prefix, digits, suffix = (part.replace("{", "{{").replace("}", "}}") for part in match.groups())
        template, first = f"{prefix}{{:0{len(digits)}d}}{suffix}", int(digits)
        if all(name == template.format(first + i) for i, name in enumerate(names)):
            return {"template": template, "first": first}
    return names


def _open_array(path: Path, spec: ImportSpec, rules: _ImageRules) -> _Source:
    with _array_errors(path):
        loaded = np.load(path, mmap_mode="r", allow_pickle=False)  # .npz members load on access
    if isinstance(loaded, np.lib.npyio.NpzFile):
        with loaded:
            kind, name = KIND_NPZ, _pick_array(path, loaded.files, spec.array)
            with _array_errors(path):
                array = loaded[name]
    else:
        kind, name, array = KIND_NPY, None, loaded
    if kind == KIND_NPY and spec.array is not None:
        raise ValueError(f"{path}: --array applies to .npz files; this is a single .npy array")
    where = f"{path} array {name!r}" if name else str(path)
    _check_array(where, array)
    layout = _layout(where, array.shape, spec.layout)

    def read(start: int, stop: int) -> np.ndarray:
        images = array[start:stop]
        images = np.ascontiguousarray(images.transpose(0, 3, 1, 2) if layout == "nhwc" else images)
        return rules.convert_arrays(images, lambda i: f"{where}[{start + i}]")

    info = {"layout": layout, "array_shape": list(array.shape), **({"array": name} if name else {})}
    return _Source(kind, sha256_file(path), int(array.shape[0]), info, read)


@contextlib.contextmanager
def _array_errors(path: Path) -> Iterator[None]:
    """np.load's failures as one clear line naming ``path`` (never suggesting to unpickle it)."""
    try:
        yield
    except ValueError as exc:  # what np.load raises for pickled data and object arrays
        raise ValueError(f"{path}: not a plain array (it holds Python objects, or is not .npy/.npz data); rgm "
                         "never unpickles input: save the images with np.save / np.savez as uint8") from exc
    except (OSError, EOFError, zipfile.BadZipFile) as exc:
        raise ValueError(f"{path}: not a readable .npy/.npz file ({exc})") from exc


def _pick_array(path: Path, names: list[str], wanted: str | None) -> str:
    if wanted is not None:
        if wanted not in names:
            raise ValueError(f"{path}: no array {wanted!r} (arrays: {', '.join(names) or 'none'})")
        return wanted
    if len(names) != 1:
        raise ValueError(f"{path}: holds {len(names)} arrays ({', '.join(names) or 'none'}); "
                         "pass --array NAME to choose one")
    return names[0]


def _check_array(where: str, array: np.ndarray) -> None:
    if array.dtype != np.uint8:
        hint = ("scale and round it first, e.g. np.clip(np.rint(a * 255), 0, 255).astype(np.uint8) for values "
                "in [0, 1]" if np.issubdtype(array.dtype, np.floating)
                else "convert it with a.astype(np.uint8) if its values are 0..255")
        raise ValueError(f"{where}: dtype {array.dtype}; images must be uint8 (0..255): {hint}")
    if array.ndim != 4:
        hint = ("; add a channel axis: a[:, None] (NCHW) or a[..., None] (NHWC)" if array.ndim == 3 else "")
        raise ValueError(f"{where}: shape {array.shape}; images must be a 4-dim array [n, C, H, W] or "
                         f"[n, H, W, C]{hint}")


def _layout(where: str, shape: tuple[int, ...], stated: str | None) -> str:
    """"nchw" or "nhwc": the one whose channel axis has size 1 or 3, or ``stated`` if it fits."""
    fitting = [layout for layout, axis in LAYOUT_CHANNEL_AXIS.items() if shape[axis] in CHANNELS]
    if stated is not None:
        if stated not in fitting:
            raise ValueError(f"{where}: shape {shape} has {shape[LAYOUT_CHANNEL_AXIS[stated]]} channels as "
                             f"{stated.upper()}; channels must be 1 or 3")
        return stated
    if not fitting:
        raise ValueError(f"{where}: shape {shape} has no channel axis of size 1 or 3 at position 1 (NCHW) or "
                         "3 (NHWC)")
    if len(fitting) > 1:
        raise ValueError(f"{where}: shape {shape} could be NCHW or NHWC; pass --layout nchw or --layout nhwc")
    return fitting[0]


def _open_parquet(path: Path, spec: ImportSpec, rules: _ImageRules) -> _Source:
    column_name = spec.image_column or DEFAULT_IMAGE_COLUMN
    try:
        names = pq.read_schema(path).names
        column = (pq.read_table(path, columns=[column_name]).column(column_name).combine_chunks()
                  if column_name in names else None)
    except pa.ArrowException as exc:
        raise ValueError(f"{path}: not readable as Parquet ({exc})") from exc
    if column is None:
        raise ValueError(f"{path}: no column {column_name!r} (columns: {', '.join(names)}); "
                         "pass --image-column COL")
    values = _image_bytes(f"{path} column {column_name!r}", column)
    shape = spec.shape

    def read_encoded(start: int, stop: int) -> np.ndarray:
        images = []
        for row, data in enumerate(values.slice(start, stop - start).to_pylist(), start):
            name = f"{path} row {row}"
            if data is None:
                raise ValueError(f"{name}: no image (null)")
            images.append(rules.to_array(name, _decode(name, data)))
        return np.stack(images)

    def read_raw(start: int, stop: int) -> np.ndarray:
        assert shape is not None
        chunk = values.slice(start, stop - start)
        size = int(np.prod(shape))
        lengths = pc.fill_null(pc.binary_length(chunk), -1).to_numpy()
        bad = np.flatnonzero(lengths != size)
        if bad.size:
            found = "null" if lengths[bad[0]] < 0 else f"{lengths[bad[0]]} bytes"
            raise ValueError(f"{path} row {start + int(bad[0])}: {found}, expected {size} bytes for "
                             f"--shape {format_shape(shape)}")
        return rules.convert_arrays(decode_images(chunk.cast(pa.binary()), shape),
                                    lambda i: f"{path} row {start + i}")

    info = {"column": column_name, "encoding": "raw CHW" if shape else "PNG/JPEG"}
    return _Source(KIND_PARQUET, sha256_file(path), len(values), info, read_raw if shape else read_encoded)


def _image_bytes(where: str, column: pa.Array) -> pa.Array:
    """The binary values of an image column (a Hugging Face-style struct gives its ``bytes`` field)."""
    if pa.types.is_struct(column.type):
        if column.type.get_field_index("bytes") < 0:
            raise ValueError(f"{where}: a struct without a 'bytes' field ({column.type})")
        column = pc.struct_field(column, "bytes")
    if not (pa.types.is_binary(column.type) or pa.types.is_large_binary(column.type)
            or pa.types.is_fixed_size_binary(column.type)):
        raise ValueError(f"{where}: type {column.type}; expected binary (PNG/JPEG bytes, or raw uint8 bytes "
                         "with --shape C,H,W) or a struct {bytes, path}")
    return column


def _positive_ints(values: Any, count: int) -> bool:
    return (isinstance(values, tuple) and len(values) == count
            and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in values))
