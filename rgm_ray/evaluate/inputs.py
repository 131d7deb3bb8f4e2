"""Turn ``--real`` and ``--set`` arguments into in-memory :class:`EvalSet` s (via the sample store)."""

from __future__ import annotations

from pathlib import Path

from rgm_ray.evaluate.protocol import REFERENCE, EvalSet
from rgm_ray.store import COPIES, IMAGE, LOG_WEIGHT, SampleSet, dataset_source
from rgm_ray.store.real import resolve_real


def parse_set_argument(text: str) -> tuple[str, Path]:
    """``"NAME=DIR"`` -> ``(NAME, Path(DIR))``."""
    name, sep, directory = text.partition("=")
    if not sep or not name or not directory:
        raise ValueError(f"--set {text!r}: expected NAME=DIR, e.g. --set plain=runs/vae/samples")
    return name, Path(directory)


def load_sample_set(name: str, directory: str | Path) -> EvalSet:
    """Images plus the optional ``log_weight`` and ``copies`` columns of the sample set at ``directory``
    (checked first: hashes, columns, image sizes, ids)."""
    sample_set = SampleSet(directory).check((IMAGE,))
    columns = [IMAGE] + [c for c in (LOG_WEIGHT, COPIES) if c in sample_set.columns]
    data = sample_set.read(columns)
    return EvalSet(name, data[IMAGE], source=f"{sample_set.source} ({directory})",
                   log_weight=data.get(LOG_WEIGHT), copies=data.get(COPIES))


def load_real(spec: str, root: str | Path | None = None) -> tuple[EvalSet, EvalSet | None]:
    """``(real, reference)`` for ``--real``.

    Resolved by :func:`resolve_real`: a dataset name gives its test split as the real set and its
    train split as the held-out reference; a sample-set directory gives the real set alone (the
    protocol then takes the reference from a disjoint subset of it).
    """
    real = resolve_real(spec, "test", root)
    if real.dataset is None:
        return load_sample_set("real", spec), None
    train = resolve_real(spec, "train", root).dataset
    return (EvalSet("real", real.dataset.images, source=dataset_source(real.dataset)),
            EvalSet(REFERENCE, train.images, source=dataset_source(train)))
