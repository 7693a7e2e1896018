"""Labelled camera frames for success classifiers: ``.npz`` files of frames and 0/1 success labels.

Format: one ``.npz`` archive (``np.savez`` / ``np.savez_compressed``) holds ``images``, uint8 ``[N, H, W, 3]``,
and ``labels``, ``[N]`` of 0/1 (any integer or float dtype) or bool, where 1 means the frame shows the task done.
Many files may be given; a directory stands for every ``*.npz`` directly inside it, in sorted order. All frames
must have the same size. Every problem is a :class:`~fleetrl.datasets.DatasetError` naming the file and the key.
"""

from __future__ import annotations

import pathlib
import zipfile
from collections.abc import Sequence

import numpy as np

from fleetrl.datasets.episode import DatasetError


def frame_files(paths: Sequence[str | pathlib.Path]) -> list[pathlib.Path]:
    """``paths`` with each directory replaced by its ``*.npz`` files (sorted); refuses a missing path, an empty
    directory and an empty ``paths``."""
    if isinstance(paths, str | pathlib.Path):
        paths = [paths]
    files: list[pathlib.Path] = []
    for p in map(pathlib.Path, paths):
        if p.is_dir():
            found = sorted(f for f in p.glob("*.npz") if f.is_file())
            if not found:
                raise DatasetError(f"{p}: no .npz files in this directory")
            files += found
        elif p.is_file():
            files.append(p)
        else:
            raise DatasetError(f"{p}: no such file or directory")
    if not files:
        raise DatasetError("no labelled frame files given")
    return files


def _load_one(path: pathlib.Path, image_key: str, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise DatasetError(f"{path}: cannot read as .npz ({type(exc).__name__}: {exc})") from exc
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise DatasetError(f"{path}: a single .npy array, not an .npz archive with '{image_key}' and '{label_key}'")
    with archive:
        for key in (image_key, label_key):
            if key not in archive.files:
                raise DatasetError(f"{path}: no '{key}' array (has {sorted(archive.files)})")
        try:
            images, labels = archive[image_key], archive[label_key]
        except ValueError as exc:  # object arrays need pickle, which is refused
            raise DatasetError(f"{path}: unreadable array ({exc})") from exc
    if images.dtype != np.uint8:
        raise DatasetError(f"{path}: '{image_key}' must be uint8 (0..255), got {images.dtype}")
    if images.ndim != 4 or images.shape[-1] != 3:
        raise DatasetError(f"{path}: '{image_key}' must be [N, H, W, 3], got shape {images.shape}")
    if labels.ndim != 1:
        raise DatasetError(f"{path}: '{label_key}' must be [N], got shape {labels.shape}")
    if len(labels) != len(images):
        raise DatasetError(f"{path}: '{label_key}' has {len(labels)} entries but '{image_key}' has {len(images)} "
                           "frames")
    if labels.dtype != np.bool_ and not np.issubdtype(labels.dtype, np.number):
        raise DatasetError(f"{path}: '{label_key}' must be 0/1 or bool, got dtype {labels.dtype}")
    bad = ~((labels == 0) | (labels == 1))
    if np.any(bad):
        i = int(np.flatnonzero(bad)[0])
        raise DatasetError(f"{path}: '{label_key}' must be 0/1 or bool, got {labels[i]!r} at index {i}")
    return images, labels.astype(bool)


def load_labelled_frames(paths: Sequence[str | pathlib.Path] | str | pathlib.Path, image_key: str = "images",
                         label_key: str = "labels") -> tuple[np.ndarray, np.ndarray]:
    """All frames of ``paths`` (files or directories of ``.npz``), concatenated in order.

    Returns ``images`` uint8 ``[N, H, W, 3]`` and ``labels`` bool ``[N]`` (True = success).
    """
    images, labels = [], []
    first: tuple[pathlib.Path, tuple[int, ...]] | None = None
    files = frame_files(paths)
    for path in files:
        x, y = _load_one(path, image_key, label_key)
        if first is None:
            first = (path, x.shape[1:])
        elif x.shape[1:] != first[1]:
            raise DatasetError(f"{path}: '{image_key}' frames are {x.shape[1:]}, but those of {first[0]} are "
                               f"{first[1]}; all frames must have one size")
        images.append(x)
        labels.append(y)
    out_x, out_y = np.concatenate(images), np.concatenate(labels)
    if len(out_x) == 0:
        raise DatasetError(f"no frames in {', '.join(map(str, files))}: every '{image_key}' array is empty")
    return out_x, out_y
