"""``--real``: one rule for every stage (rgm_ray.store.real), and the weigh and evaluate inputs built on it."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from rgm_ray.data import DATASET_NAMES, load_dataset
from rgm_ray.evaluate.inputs import load_real
from rgm_ray.evaluate.protocol import REFERENCE
from rgm_ray.store import export_dataset
from rgm_ray.store.real import resolve_real
from rgm_ray.weigh.inputs import open_real


@pytest.fixture
def exported(tmp_path, fmnist_test):
    """The first 300 test images exported as a sample set in ``tmp_path/fashion-mnist``: a directory
    named like the dataset."""
    small = dataclasses.replace(fmnist_test, images=fmnist_test.images[:300], labels=fmnist_test.labels[:300])
    export_dataset(small, tmp_path / "fashion-mnist", shard_size=100)
    return tmp_path / "fashion-mnist"


def test_a_dataset_name_means_the_split_the_caller_asks_for():
    for split in ("train", "test"):
        real = resolve_real("fashion-mnist", split)
        assert real.samples is None and real.dataset.name == "fashion-mnist" and real.dataset.split == split


def test_a_dataset_name_wins_over_a_directory_of_that_name(exported, monkeypatch):
    monkeypatch.chdir(exported.parent)
    assert resolve_real("fashion-mnist", "test").dataset is not None
    by_path = resolve_real("./fashion-mnist", "test")  # how to name the directory instead
    assert by_path.dataset is None and len(by_path.samples) == 300
    assert resolve_real(str(exported), "train").samples.source == "dataset:fashion-mnist/test"


def test_anything_else_must_be_a_sample_set_directory(tmp_path):
    with pytest.raises(ValueError, match="neither a dataset name") as info:
        resolve_real(str(tmp_path / "nowhere"), "train")
    assert all(name in str(info.value) for name in DATASET_NAMES)
    with pytest.raises(ValueError, match="neither a dataset name"):
        resolve_real("mnist", "test")


def test_weigh_takes_the_train_split_or_the_sample_set(exported, fmnist_test):
    pool = open_real("fashion-mnist")
    train = load_dataset("fashion-mnist", "train")
    assert pool.name == "--real fashion-mnist" and pool.dataset == ("fashion-mnist", "train") and len(pool) == len(train)
    assert pool.identity == f"dataset:fashion-mnist/train:{train.source}:{len(train)}"
    assert np.array_equal(pool.fetch(np.array([7, 0])), train.images[[7, 0]])
    from_set = open_real(str(exported))
    assert from_set.name == f"--real {exported}" and from_set.dataset == ("fashion-mnist", "test")
    assert np.array_equal(from_set.fetch(np.array([299, 3])), fmnist_test.images[[299, 3]])


def test_evaluate_takes_the_test_split_with_the_train_reference_or_the_sample_set(exported, fmnist_test):
    real, reference = load_real("fashion-mnist")
    assert real.name == "real" and real.source == "dataset:fashion-mnist/test"
    assert np.array_equal(real.images, fmnist_test.images)
    assert reference.name == REFERENCE and reference.source == "dataset:fashion-mnist/train"
    from_set, none = load_real(str(exported))
    assert none is None and from_set.source == f"dataset:fashion-mnist/test ({exported})"
    assert np.array_equal(from_set.images, fmnist_test.images[:300])
