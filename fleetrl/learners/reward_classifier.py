"""A binary success classifier on camera frames, used as the reward of real robots (HIL-SERL, arXiv 2410.21845).

A real robot has no simulator to say when the task is done. As in HIL-SERL, users label camera frames as success
or failure, a small image classifier is trained on them, and the robot actor rewards (and ends) an episode when the
classifier's success probability reaches a threshold. :func:`train_classifier` trains one, :func:`save_classifier`
and :func:`load_classifier` move it through one ``torch.save`` file.

Input convention (as :mod:`fleetrl.learners.encoders`): channels-last ``[B, H, W, 3]`` frames, square
``H == W == image_size``; ``uint8`` frames are scaled to ``[0, 1]``, floating frames are taken as ``[0, 1]``.
Pure PyTorch: nothing here knows about replay, processes, envs or dataset files.
"""

from __future__ import annotations

import dataclasses
import math
import os
import pathlib
import tempfile
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fleetrl.learners.encoders import random_shift

FORMAT = "fleetrl.success_classifier"
FORMAT_VERSION = 1
#: Fewer frames of a class than this cannot be split into training and validation frames meaningfully.
MIN_PER_CLASS = 4
#: Candidate thresholds, smallest first: 0.50, 0.51, ..., 0.95.
THRESHOLDS = tuple(round(0.5 + 0.01 * i, 2) for i in range(46))


@dataclasses.dataclass(frozen=True)
class ClassifierConfig:
    """Hyperparameters of :func:`train_classifier`."""

    epochs: int = 50
    """Passes over the training frames. Trained from scratch, the net needs a few hundred gradient steps: small
    labelled sets (100-200 frames) want more epochs than this."""
    batch_size: int = 64
    """Frames per gradient step (the last batch of an epoch may be smaller)."""
    lr: float = 1e-3
    """AdamW learning rate."""
    weight_decay: float = 1e-4
    """AdamW decoupled weight decay."""
    val_fraction: float = 0.2
    """Share of each class held out for validation metrics and the threshold choice, in ``(0, 0.5]``."""
    shift_pad: int = 4
    """DrQ random-shift pad in pixels applied to training frames (0: no augmentation). Labelled sets are small
    (HIL-SERL uses a few hundred frames), so shift augmentation is what keeps the net from memorising pixels."""
    channels: tuple[int, ...] = (16, 32, 32, 64)
    """Output channels of the stride-2 conv stages; each stage halves the resolution."""
    min_precision: float = 0.95
    """The threshold is the smallest in ``[0.5, 0.95]`` with at least this validation precision: a false success
    ends an episode wrongly and rewards the wrong behaviour, so precision matters more than recall."""
    threshold: float | None = None
    """A fixed success threshold in ``(0, 1)`` instead of the validation-based choice."""
    seed: int = 0
    """Seeds the split, the initial weights, the batch order and the augmentation."""

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name}: must be >= 1, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ValueError(f"lr: must be > 0, got {self.lr}")
        if not self.weight_decay >= 0:
            raise ValueError(f"weight_decay: must be >= 0, got {self.weight_decay}")
        if not 0 < self.val_fraction <= 0.5:
            raise ValueError(f"val_fraction: must be in (0, 0.5], got {self.val_fraction}")
        if int(self.shift_pad) < 0:
            raise ValueError(f"shift_pad: must be >= 0, got {self.shift_pad}")
        if not self.channels or any(int(c) < 1 for c in self.channels):
            raise ValueError(f"channels: must be a non-empty sequence of positive widths, got {self.channels}")
        object.__setattr__(self, "channels", tuple(int(c) for c in self.channels))
        if not 0 < self.min_precision <= 1:
            raise ValueError(f"min_precision: must be in (0, 1], got {self.min_precision}")
        if self.threshold is not None and not 0 < self.threshold < 1:
            raise ValueError(f"threshold: must be in (0, 1), got {self.threshold}")


class SuccessClassifier(nn.Module):
    """``[B, S, S, 3]`` frames -> success logits ``[B]``.

    Per entry of ``channels`` a stride-2 3x3 conv + GroupNorm + ReLU, then global average pooling and a linear
    layer. About 10 M multiply-adds at 128 px with the default widths, a few ms per frame on one CPU thread, so
    a robot actor can score every frame. GroupNorm rather than BatchNorm: scoring one frame at a time must
    behave as in training, with no batch statistics to drift.
    """

    def __init__(self, image_size: int, channels: tuple[int, ...] = ClassifierConfig.channels) -> None:
        super().__init__()
        if int(image_size) < 8:
            raise ValueError(f"image_size: must be >= 8, got {image_size}")
        self.image_size, self.channels = int(image_size), tuple(int(c) for c in channels)
        layers: list[nn.Module] = []
        width = 3
        for c in self.channels:
            layers += [nn.Conv2d(width, c, 3, stride=2, padding=1, bias=False), nn.GroupNorm(math.gcd(c, 8), c),
                       nn.ReLU(inplace=True)]
            width = c
        self.convs = nn.Sequential(*layers)
        self.head = nn.Linear(width, 1)

    def forward(self, images: Tensor) -> Tensor:
        s = self.image_size
        if images.dim() != 4 or tuple(images.shape[1:]) != (s, s, 3):
            raise ValueError(f"SuccessClassifier: images must be [B, {s}, {s}, 3], got {tuple(images.shape)}")
        x = images.permute(0, 3, 1, 2)
        x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
        x = self.convs(x - 0.5)
        return self.head(x.mean(dim=(2, 3))).squeeze(-1)


def _stratified_split(labels: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Per class a seeded permutation; ``round(val_fraction * n)`` (at least 1) of each class go to validation, so
    both sets keep the class balance of the whole set."""
    rng = np.random.default_rng(seed)
    train, val = [], []
    for cls in (False, True):
        idx = rng.permutation(np.flatnonzero(labels == cls))
        n_val = max(1, round(val_fraction * len(idx)))
        val.append(idx[:n_val])
        train.append(idx[n_val:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


def _rates(probs: np.ndarray, labels: np.ndarray, threshold: float) -> dict[str, float]:
    pred = probs >= threshold
    tp = int(np.sum(pred & labels))
    predicted, actual = int(pred.sum()), int(labels.sum())
    return {"val_accuracy": float(np.mean(pred == labels)),
            # No predicted success: no false positive either, but no evidence of precision; NaN says so.
            "val_precision": tp / predicted if predicted else float("nan"),
            "val_recall": tp / actual if actual else float("nan")}


def _auc(probs: np.ndarray, labels: np.ndarray) -> float:
    """ROC AUC: the chance that a random success frame scores above a random failure frame (ties count half).
    Threshold-free, so it tells a classifier that ranks well but is miscalibrated from one that cannot tell."""
    pos, neg = probs[labels][:, None], probs[~labels][None, :]
    return float(np.mean((pos > neg) + 0.5 * (pos == neg)))


def choose_threshold(probs: np.ndarray, labels: np.ndarray, min_precision: float) -> tuple[float, str]:
    """The smallest of :data:`THRESHOLDS` whose precision on ``(probs, labels)`` is ``>= min_precision`` (the
    smallest keeps the most recall), else 0.5; returns it with the reason."""
    labels = labels.astype(bool)
    for t in THRESHOLDS:
        precision = _rates(probs, labels, t)["val_precision"]
        if precision >= min_precision:  # False for NaN: a threshold nothing passes is no evidence
            return t, f"smallest threshold in [0.5, 0.95] with validation precision >= {min_precision:g}"
    return 0.5, f"fallback: no threshold in [0.5, 0.95] reaches validation precision {min_precision:g}"


@torch.no_grad()
def predict_proba(model: SuccessClassifier, images: np.ndarray | Tensor, batch_size: int = 256) -> np.ndarray:
    """Success probabilities ``[N]`` of ``images [N, S, S, 3]`` in eval mode (the model's mode is restored)."""
    was_training = model.training
    model.eval()
    images = torch.as_tensor(images)
    out = [torch.sigmoid(model(images[i:i + batch_size])) for i in range(0, len(images), batch_size)]
    model.train(was_training)
    return torch.cat(out).numpy() if out else np.zeros(0, np.float32)


def _check_data(images: np.ndarray, labels: np.ndarray) -> np.ndarray:
    if images.ndim != 4 or images.shape[-1] != 3 or images.shape[1] != images.shape[2]:
        raise ValueError(f"images: must be [N, S, S, 3] (square frames), got shape {images.shape}")
    if images.dtype != np.uint8:
        raise ValueError(f"images: must be uint8, got {images.dtype}")
    labels = np.asarray(labels)
    if labels.shape != (len(images),):
        raise ValueError(f"labels: must be [N] with N = {len(images)} frames, got shape {labels.shape}")
    if not np.all((labels == 0) | (labels == 1)):
        raise ValueError(f"labels: must be 0/1 or bool, got values {np.unique(labels)[:10]}")
    labels = labels.astype(bool)
    n_pos = int(labels.sum())
    counts = {"success": n_pos, "failure": len(labels) - n_pos}
    if min(counts.values()) == 0:
        raise ValueError(f"labels: need both success and failure frames, got only one class ({counts})")
    if min(counts.values()) < MIN_PER_CLASS:
        raise ValueError(f"labels: need at least {MIN_PER_CLASS} frames of each class, got {counts}")
    return labels


def train_classifier(images: np.ndarray, labels: np.ndarray, cfg: ClassifierConfig = ClassifierConfig(),
                     progress: Callable[[int, float], None] | None = None) -> tuple[SuccessClassifier, dict]:
    """Train a :class:`SuccessClassifier` on ``images uint8 [N, S, S, 3]`` with ``labels [N]`` (1 = success).

    Returns the model in eval mode and its metrics: ``val_accuracy``, ``val_precision``, ``val_recall`` (at the
    threshold), ``val_auc``, ``val_loss``, ``train_loss`` (last epoch), ``threshold``, ``threshold_reason``,
    ``n_train``, ``n_val``, ``positives``, ``negatives``. ``progress(epoch, mean_train_loss)`` is called after
    each epoch. Deterministic given ``cfg.seed`` (on the same machine and torch build).
    """
    images = np.asarray(images)
    labels = _check_data(images, labels)
    train_idx, val_idx = _stratified_split(labels, cfg.val_fraction, cfg.seed)
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    model = SuccessClassifier(images.shape[1], cfg.channels)
    x_train, y_train = torch.from_numpy(images[train_idx]), torch.from_numpy(labels[train_idx]).float()
    # Success frames are usually the minority (an episode has one success moment and many failure frames):
    # weighting positives by the negative/positive ratio keeps the loss from favouring "never success".
    pos_weight = torch.tensor((len(y_train) - y_train.sum().item()) / y_train.sum().item())
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    model.train()
    train_loss = float("nan")
    for epoch in range(cfg.epochs):
        order, total = torch.randperm(len(x_train), generator=gen), 0.0
        for start in range(0, len(order), cfg.batch_size):
            batch = order[start:start + cfg.batch_size]
            x = x_train[batch]
            if cfg.shift_pad:
                x = random_shift(x.permute(0, 3, 1, 2), cfg.shift_pad, generator=gen).permute(0, 2, 3, 1)
            loss = F.binary_cross_entropy_with_logits(model(x), y_train[batch], pos_weight=pos_weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item() * len(batch)
        train_loss = total / len(x_train)
        if progress is not None:
            progress(epoch + 1, train_loss)
    model.eval()
    val_probs, val_labels = predict_proba(model, images[val_idx]), labels[val_idx]
    if cfg.threshold is None:
        threshold, reason = choose_threshold(val_probs, val_labels, cfg.min_precision)
    else:
        threshold, reason = float(cfg.threshold), "given"
    val_loss = F.binary_cross_entropy(torch.from_numpy(val_probs).clamp(1e-7, 1 - 1e-7),
                                      torch.from_numpy(val_labels).float()).item()
    metrics = {**_rates(val_probs, val_labels, threshold), "val_auc": _auc(val_probs, val_labels),
               "val_loss": val_loss, "train_loss": train_loss,
               "threshold": float(threshold), "threshold_reason": reason, "n_train": len(train_idx),
               "n_val": len(val_idx), "positives": int(labels.sum()), "negatives": int((~labels).sum())}
    return model, metrics


def _check_plain(value: Any, where: str) -> None:
    """Refuse what ``torch.load(weights_only=True)`` would refuse later (numpy scalars, arbitrary objects), now,
    while the caller can still fix it, rather than when a robot loads the file."""
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise ValueError(f"{where}: keys must be str, got {k!r}")
            _check_plain(v, f"{where}[{k!r}]")
    elif isinstance(value, list | tuple):
        for i, v in enumerate(value):
            _check_plain(v, f"{where}[{i}]")
    elif value is not None and type(value) not in (str, int, float, bool):
        raise ValueError(f"{where}: must be plain Python (str, int, float, bool, None, list, dict), got "
                         f"{type(value).__name__}")


def save_classifier(path: str | os.PathLike, model: SuccessClassifier, meta: dict[str, Any]) -> pathlib.Path:
    """Write ``model`` and ``meta`` (which must hold ``threshold``; e.g. ``metrics`` too) to one file.

    ``meta`` values must be plain Python (str, int, float, bool, None, lists, dicts) so that the file loads with
    ``weights_only=True``. Written to a temporary file and renamed, so an existing file is never left half-written.
    """
    path = pathlib.Path(path)
    threshold = meta.get("threshold")
    if not isinstance(threshold, float | int) or not 0 < threshold < 1:
        raise ValueError(f"meta['threshold']: must be a number in (0, 1), got {threshold!r}")
    _check_plain(meta, "meta")
    meta = {**meta, "image_size": model.image_size, "channels": list(model.channels), "threshold": float(threshold)}
    blob = {"format": FORMAT, "format_version": FORMAT_VERSION, "meta": meta,
            "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}}
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(blob, f)
        os.replace(tmp, path)
    except BaseException:
        pathlib.Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_classifier(path: str | os.PathLike) -> tuple[SuccessClassifier, dict[str, Any]]:
    """Read a file :func:`save_classifier` wrote: the model (CPU, eval mode) and its meta (with ``threshold``,
    ``image_size``, ``channels`` and ``format_version``). Anything else gives a ValueError naming the file."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such classifier file")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle, zip and weights-only errors have no common base class
        raise ValueError(f"{path}: not a fleetrl success classifier ({type(exc).__name__}: {exc})") from exc
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise ValueError(f"{path}: not a fleetrl success classifier (no '{FORMAT}' format marker)")
    if blob.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path}: classifier format version {blob.get('format_version')!r}; this fleetrl reads "
                         f"version {FORMAT_VERSION}")
    meta = dict(blob["meta"])
    try:
        model = SuccessClassifier(meta["image_size"], tuple(meta["channels"]))
        model.load_state_dict(blob["state_dict"])
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise ValueError(f"{path}: damaged classifier file ({type(exc).__name__}: {exc})") from exc
    meta["format_version"] = blob["format_version"]
    return model.eval(), meta
