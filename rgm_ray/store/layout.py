"""The side files of a sample set's directory, named so that any Parquet reader can open the directory.

A set is its shards (``shard-NNNNN.parquet``) plus JSON side files: :data:`MANIFEST_NAME` (every set,
written last) and :data:`PLAN_FILE` (a generated set's plan, written first). Their names start with
``_`` because pyarrow (hence pandas), Ray Data and Hugging Face ``datasets`` skip files whose names
start with ``_`` or ``.`` (the temporaries) when they read a directory, so ``pandas.read_parquet(SET)``
and ``pyarrow.dataset.dataset(SET)`` see the shards alone.

Sets written by earlier versions hold the same files under the plain names of :data:`OLD_NAMES`
(``manifest.json``, ``generation.json``). Everything still reads, verifies, resumes and resamples them:
:func:`side_file` is the one lookup, the new name first and the old one as fallback. Reading never
renames anything, so a finished old-layout set keeps its names until something writes into it. The
one command that writes into an existing set, ``rgm generate`` continuing a set of the same plan,
first moves it to the new names (:func:`migrate_layout`, called once the plan has shown the directory
to be its own): each rename (``os.replace``) is atomic and readers take either name for each file, so
a run killed between the renames leaves a set that reads and resumes as before. A file's content does
not change with its name, so the manifest digests recorded downstream (``_complete.json``, evaluate's
and audit's inputs) stay valid.
"""

from __future__ import annotations

import os
from pathlib import Path

MANIFEST_NAME = "_manifest.json"
PLAN_FILE = "_generation.json"
OLD_NAMES = {MANIFEST_NAME: "manifest.json", PLAN_FILE: "generation.json"}  # before they started with "_"


def side_file(directory: str | Path, name: str) -> Path:
    """Where ``directory`` holds the side file ``name`` (a key of :data:`OLD_NAMES`): under ``name``,
    or its old name when only that exists (an old-layout set); ``directory / name`` when neither does."""
    new = Path(directory) / name
    old = new.with_name(OLD_NAMES[name])
    return old if not (new.exists() or new.is_symlink()) and old.is_file() else new


def migrate_layout(directory: str | Path) -> None:
    """Give ``directory``'s old-layout side files their new names.

    Only for a directory its caller writes (and holds the output lock of). A file found under both
    names keeps the new one, which every reader takes; the old one is removed.
    """
    for name, old in OLD_NAMES.items():
        stale = Path(directory) / old
        if not (stale.is_file() or stale.is_symlink()):
            continue
        if side_file(directory, name) == stale:
            os.replace(stale, stale.with_name(name))
        else:
            stale.unlink()
