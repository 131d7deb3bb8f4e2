"""Shared fixtures. Tests never download: real data comes from the Debian Fashion-MNIST package."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
# Tiny test models are dominated by thread hand-off costs; one intra-op thread is faster and steadier.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def fmnist_test():
    from rgm_ray.data import load_dataset

    return load_dataset("fashion-mnist", "test")


@pytest.fixture(scope="session")
def fm_train():
    from rgm_ray.data import load_dataset

    return load_dataset("fashion-mnist", "train")


@pytest.fixture(scope="session")
def domain_ckpt(tmp_path_factory, fm_train, fmnist_test):
    """A quick domain ResNet (1 epoch on 1024 train images, accuracy on 256 test images): features for the
    evaluate and audit tests, whose numbers need a network, not a good one."""
    import dataclasses

    from rgm_ray.models.domain import DomainConfig, train_domain_classifier

    out = tmp_path_factory.mktemp("quick_domain") / "domain"
    small_test = dataclasses.replace(fmnist_test, images=fmnist_test.images[:256], labels=fmnist_test.labels[:256])
    train_domain_classifier(fm_train, small_test, DomainConfig(epochs=1, batch_size=64, train_images=1024), out)
    return out


@pytest.fixture
def tracking_uri(tmp_path, monkeypatch):
    """A throwaway MLflow SQLite store per test."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture(scope="module")
def ray_local():
    """One local Ray cluster per test module (start-up costs ~5 s; never one per test)."""
    import ray

    from rgm_ray.runtime import init_ray

    init_ray(num_cpus=2)
    yield ray
    ray.shutdown()
