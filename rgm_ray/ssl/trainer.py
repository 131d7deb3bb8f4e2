"""The semi-supervised training loop: CE on a labelled half-batch + w * semantic loss on an
unlabelled half-batch, with model selection on a validation split and a final test evaluation.

Choices (the thesis gives only "Adam, lr 1e-3, batch 32 = 16 + 16, 20 epochs"):

* **Epoch = a fixed number of steps**, by default ``ceil(pool / (batch_size / 2))`` where ``pool``
  is the real training pool (the training split minus the validation split): one epoch shows every
  pool image once in the all-labels run, and every configuration (label count, unlabelled source,
  SL weight) gets the same number of steps, so sources are compared at equal compute. Both halves
  of a batch are drawn from endless streams of seeded permutations (labelled images cycle many
  times per epoch with few labels; unlabelled images cycle at their own pace).
* **Source ``none``** keeps the labelled half-batch alone, so every run sees the same labelled images.
* **Model selection on validation only:** the weights of the epoch with the best validation
  accuracy are kept; the test split is evaluated once, at the end, on those weights (``test_acc``)
  and on the last epoch's (``test_acc_last``). Optional early stopping after ``patience`` epochs
  without improvement.
* **Determinism:** the network is initialised from ``seed`` and every batch index comes from
  ``numpy_rng(seed, stream, pass)``; no global RNG is read, so a seed reproduces a run exactly
  (on one device type and thread count).
"""

from __future__ import annotations

import copy
import math
import numbers
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, fields
from typing import Any, Callable

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from rgm_ray.models.resnet import preprocess
from rgm_ray.seeding import numpy_rng
from rgm_ray.ssl.objective import KEY_ACC_LABELED, KEY_CE, KEY_LOSS, KEY_SL, ssl_loss
from rgm_ray.ssl.sources import UnlabeledPool
from rgm_ray.tracking import NullTracker, Tracker

# Metric names: logged to MLflow, reported to Tune and written to metrics.json.
KEY_EPOCH = "epoch"
KEY_VAL_ACC = "val_acc"
KEY_VAL_LOSS = "val_loss"
KEY_BEST_VAL_ACC = "best_val_acc"
KEY_BEST_EPOCH = "best_epoch"
KEY_TEST_ACC = "test_acc"
KEY_TEST_ACC_LAST = "test_acc_last"
KEY_TRAIN_SECONDS = "train_seconds"
TRAIN_PREFIX = "train_"

ALL_LABELS = "all"
DEFAULT_VAL_SIZE = 5000

# Stream tags of the batch-index streams (labels.py uses 1 and 2 for its own selections).
_LABELED_STREAM = 11
_UNLABELED_STREAM = 12


@dataclass(frozen=True)
class SSLConfig:
    """One semi-supervised run. Defaults are the thesis's (Table 6.4) settings."""

    labels: int | None = None  # class-balanced labelled subset size; None = the whole pool ("all")
    sl_weight: float = 0.0005
    sl_on_labeled: bool = False  # also apply SL to the labelled half (as Xu et al.'s code did)
    epochs: int = 20
    steps_per_epoch: int | None = None  # None: ceil(pool / (batch_size / 2)), see the module docstring
    batch_size: int = 32  # labelled + unlabelled images per step (half each)
    lr: float = 1e-3
    patience: int | None = None  # stop after this many epochs without a better validation accuracy
    val_size: int | None = None  # None: min(5000, pool // 10); carved from the real training split
    train_subset: int | None = None  # use a fixed random subset of the training split (quick runs)
    test_subset: int | None = None  # evaluate on a fixed random subset of the test split (quick runs)
    split_seed: int = 0  # the validation split and subsets; fixed across run seeds so runs compare
    weight_alpha: float = 1.0  # flattening w^alpha of a weighted: source's importance weights
    eval_batch_size: int = 500
    seed: int = 0  # labelled subset, initial weights and batch order

    def __post_init__(self) -> None:
        if self.labels is not None and not _is_int(self.labels, minimum=1):
            raise ValueError(f"labels must be a positive int or None (all), got {self.labels!r}")
        if not _is_number(self.sl_weight) or not 0 <= self.sl_weight < math.inf:
            raise ValueError(f"sl_weight must be a finite number >= 0, got {self.sl_weight!r}")
        if not isinstance(self.sl_on_labeled, bool):
            raise ValueError(f"sl_on_labeled must be true or false, got {self.sl_on_labeled!r}")
        for name in ("epochs", "eval_batch_size"):
            if not _is_int(getattr(self, name), minimum=1):
                raise ValueError(f"{name} must be a positive int, got {getattr(self, name)!r}")
        for name in ("steps_per_epoch", "patience", "val_size", "train_subset", "test_subset"):
            value = getattr(self, name)
            if value is not None and not _is_int(value, minimum=1):
                raise ValueError(f"{name} must be a positive int or null, got {value!r}")
        if not _is_int(self.batch_size, minimum=2) or self.batch_size % 2:
            raise ValueError(f"batch_size must be an even int >= 2 (half labelled, half unlabelled), "
                             f"got {self.batch_size!r}")
        if not _is_number(self.lr) or not 0 < self.lr < math.inf:
            raise ValueError(f"lr must be a positive number, got {self.lr!r}")
        if not _is_number(self.weight_alpha) or not 0 <= self.weight_alpha <= 1:
            raise ValueError(f"weight_alpha must be a number in [0, 1], got {self.weight_alpha!r}")
        for name in ("split_seed", "seed"):
            if not _is_int(getattr(self, name), minimum=0):
                raise ValueError(f"{name} must be a non-negative int, got {getattr(self, name)!r}")

    @property
    def half_batch(self) -> int:
        return self.batch_size // 2

    @property
    def labels_name(self) -> str:
        """``"all"`` or the label count, as reports print it."""
        return ALL_LABELS if self.labels is None else str(self.labels)

    def steps_for(self, pool_size: int) -> int:
        """Steps per epoch for a real training pool of ``pool_size`` images."""
        return self.steps_per_epoch or math.ceil(pool_size / self.half_batch)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SSLConfig:
        """Build from a plain dict (YAML, CLI); ``labels: all`` means None; unknown keys are an error."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown SSL config key(s) {unknown}; known: {sorted(known)}")
        d = dict(d)
        if "labels" in d:
            d["labels"] = parse_labels(d["labels"])
        return cls(**d)


def parse_labels(value: object) -> int | None:
    """``"all"`` / None -> None; a positive int (or its string) -> int."""
    if value is None or value == ALL_LABELS:
        return None
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if not _is_int(value, minimum=1):
        raise ValueError(f"labels must be a positive int or '{ALL_LABELS}', got {value!r}")
    return int(value)  # type: ignore[arg-type]


def _is_int(v: object, *, minimum: int) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= minimum


def _is_number(v: object) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


@dataclass(frozen=True)
class SSLData:
    """Everything a run trains and evaluates on: uint8 images ``[N, C, H, W]`` and int64 labels."""

    labeled_x: np.ndarray
    labeled_y: np.ndarray
    val_x: np.ndarray
    val_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    pool_size: int  # real training pool the labelled subset was drawn from (sets the epoch length)
    num_classes: int
    unlabeled: UnlabeledPool | None = None

    def __post_init__(self) -> None:
        for name in ("labeled", "val", "test"):
            x, y = getattr(self, f"{name}_x"), getattr(self, f"{name}_y")
            if x.dtype != np.uint8 or x.ndim != 4 or len(x) == 0 or y.shape != (len(x),):
                raise ValueError(f"{name} images must be non-empty uint8 [N,C,H,W] with N labels, "
                                 f"got {x.dtype} {x.shape} and labels {y.shape}")
        if self.unlabeled is not None and self.unlabeled.images.shape[1:] != self.labeled_x.shape[1:]:
            raise ValueError(f"unlabelled images {self.unlabeled.images.shape[1:]} differ from labelled "
                             f"images {self.labeled_x.shape[1:]}")

    def sizes(self) -> dict[str, int]:
        return {"labeled": len(self.labeled_x), "val": len(self.val_x), "test": len(self.test_x),
                "pool": self.pool_size, "unlabeled": 0 if self.unlabeled is None else len(self.unlabeled)}


class IndexStream:
    """Endless fixed-size batches of indices into ``range(n)``, pass after pass.

    Pass ``p`` is the permutation ``numpy_rng(seed, stream, p)``; a batch that reaches the end of a
    pass continues into the next one, so every batch is full and every index is used equally often.
    """

    def __init__(self, n: int, seed: int, stream: int) -> None:
        if n < 1:
            raise ValueError(f"an index stream needs n >= 1, got {n}")
        self.n, self.seed, self.stream = n, seed, stream
        self._pass, self._pos = 0, 0
        self._order = self._permutation(0)

    def _permutation(self, p: int) -> np.ndarray:
        return numpy_rng(self.seed, self.stream, p).permutation(self.n)

    def take(self, k: int) -> np.ndarray:
        """The next ``k`` indices (int64)."""
        chunks = []
        while k > 0:
            if self._pos == self.n:
                self._pass, self._pos = self._pass + 1, 0
                self._order = self._permutation(self._pass)
            chunk = self._order[self._pos:self._pos + k]
            self._pos += chunk.size
            k -= chunk.size
            chunks.append(chunk)
        return np.concatenate(chunks).astype(np.int64)


def _images(x: np.ndarray, idx: np.ndarray | slice, device: torch.device) -> torch.Tensor:
    return preprocess(torch.from_numpy(np.ascontiguousarray(x[idx]))).to(device)


@torch.no_grad()
def evaluate(model: nn.Module, images: np.ndarray, labels: np.ndarray, *, batch_size: int,
             device: torch.device) -> tuple[float, float]:
    """``(accuracy, mean cross-entropy)`` of ``model`` on uint8 ``images`` in eval mode (BN running stats)."""
    was_training = model.training
    model.eval()
    correct, loss_sum = 0, 0.0
    for start in range(0, len(images), batch_size):
        logits = model(_images(images, slice(start, start + batch_size), device))
        y = torch.from_numpy(labels[start:start + batch_size].astype(np.int64)).to(device)
        correct += int((logits.argmax(dim=1) == y).sum())
        loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
    model.train(was_training)
    return correct / len(images), loss_sum / len(images)


EpochCallback = Callable[[dict[str, float]], None]


def train_ssl(model: nn.Module, data: SSLData, config: SSLConfig, *, device: torch.device | None = None,
              tracker: Tracker | None = None, progress: Callable[..., Any] | None = None,
              on_epoch: EpochCallback | None = None) -> dict[str, Any]:
    """Train ``model`` (logits ``[B, num_classes]`` from preprocessed images) and evaluate it.

    After every epoch the record ``{epoch, train_loss, train_ce, train_sl, train_acc_labeled,
    val_acc, val_loss, best_val_acc}`` is logged to ``tracker`` and passed to ``on_epoch`` (e.g.
    ``ray.tune.report``); the last epoch's record also holds ``best_epoch``, ``test_acc`` and
    ``test_acc_last``, so a scheduler that stops at the last epoch still sees the test result.
    On return ``model`` holds the selected (best-validation) weights. Returns the summary with the
    per-epoch ``history``.
    """
    tracker = tracker or NullTracker()
    device = device or torch.device("cpu")
    half = config.half_batch
    steps = config.steps_for(data.pool_size)
    pool = data.unlabeled
    labeled = IndexStream(len(data.labeled_x), config.seed, _LABELED_STREAM)
    unlabeled = IndexStream(len(pool), config.seed, _UNLABELED_STREAM) if pool is not None else None

    model.to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    bar = progress(total=steps * config.epochs, desc="ssl", unit="step") if progress else None
    history: list[dict[str, float]] = []
    best_val, best_epoch, best_state, stale = -1.0, 0, None, 0
    started = time.perf_counter()
    for epoch in range(1, config.epochs + 1):
        sums: dict[str, float] = defaultdict(float)
        for _ in range(steps):
            li = labeled.take(half)
            x_lab = _images(data.labeled_x, li, device)
            y_lab = torch.from_numpy(data.labeled_y[li].astype(np.int64)).to(device)
            x_unl, w_unl = None, None
            if unlabeled is not None:
                ui = pool.rows[unlabeled.take(half)]
                x_unl = _images(pool.images, ui, device)
                w_unl = None if pool.weights is None else torch.from_numpy(pool.weights[ui])
            loss, parts = ssl_loss(model, x_lab, y_lab, x_unl, sl_weight=config.sl_weight,
                                   unl_weights=w_unl, sl_on_labeled=config.sl_on_labeled)
            if not math.isfinite(parts[KEY_LOSS]):
                raise FloatingPointError(f"non-finite training loss {parts[KEY_LOSS]} in epoch {epoch}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            for key, value in parts.items():
                sums[key] += value
            if bar is not None:
                bar.update(1)
        record: dict[str, float] = {KEY_EPOCH: epoch}
        record.update({TRAIN_PREFIX + k: sums[k] / steps for k in (KEY_LOSS, KEY_CE, KEY_SL, KEY_ACC_LABELED)})
        val_acc, val_loss = evaluate(model, data.val_x, data.val_y, batch_size=config.eval_batch_size, device=device)
        record.update({KEY_VAL_ACC: val_acc, KEY_VAL_LOSS: val_loss})
        if val_acc > best_val:
            best_val, best_epoch, stale = val_acc, epoch, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            stale += 1
        record[KEY_BEST_VAL_ACC] = best_val
        last = epoch == config.epochs or (config.patience is not None and stale >= config.patience)
        if last:
            record.update(_final_test(model, None if best_epoch == epoch else best_state, data, config, device))
            record[KEY_BEST_EPOCH] = best_epoch
        history.append(record)
        tracker.log_metrics(record, step=epoch)
        if bar is not None:
            bar.set_postfix({"loss": f"{record[TRAIN_PREFIX + KEY_LOSS]:.3f}", "val": f"{val_acc:.3f}"})
        if on_epoch is not None:
            on_epoch(dict(record))
        if last:
            break
    if bar is not None:
        bar.close()
    seconds = time.perf_counter() - started
    final = history[-1]
    tracker.log_metrics({KEY_TRAIN_SECONDS: seconds})
    return {KEY_VAL_ACC: best_val, KEY_BEST_EPOCH: best_epoch, KEY_TEST_ACC: final[KEY_TEST_ACC],
            KEY_TEST_ACC_LAST: final[KEY_TEST_ACC_LAST], "epochs_run": len(history),
            "steps": steps * len(history), "steps_per_epoch": steps, KEY_TRAIN_SECONDS: seconds,
            "sizes": data.sizes(), "history": history}


def _final_test(model: nn.Module, best_state: dict[str, torch.Tensor] | None, data: SSLData,
                config: SSLConfig, device: torch.device) -> dict[str, float]:
    """Test accuracy of the last weights, then of the selected ones (loaded into ``model``);
    ``best_state`` None means the last epoch is the selected one."""
    def test_acc() -> float:
        return evaluate(model, data.test_x, data.test_y, batch_size=config.eval_batch_size, device=device)[0]

    last = test_acc()
    if best_state is None:
        return {KEY_TEST_ACC: last, KEY_TEST_ACC_LAST: last}
    model.load_state_dict(best_state)
    return {KEY_TEST_ACC: test_acc(), KEY_TEST_ACC_LAST: last}
