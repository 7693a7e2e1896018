"""Reading episode datasets: :func:`read_episodes` (lazy), :func:`load_episodes` and :func:`dataset_info`.

Every kind of damage becomes a :class:`~fleetrl.datasets.episode.DatasetError` naming the file.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from collections.abc import Iterator, Mapping
from typing import Any

import h5py
import numpy as np

from fleetrl.datasets.episode import (
    EPISODE_RESERVED,
    EPISODES,
    FORMAT,
    OBSERVATIONS,
    STEP_KEYS,
    SUPPORTED_VERSIONS,
    DatasetError,
    Episode,
    compare_spec,
)


def open_hdf5(name: str, kind: str = "dataset file") -> h5py.File:
    """Open ``name`` read-only; a missing file, a directory or a non-HDF5 file raises :class:`DatasetError`."""
    if not os.path.exists(name):
        raise DatasetError(f"{name}: no such file")
    if os.path.isdir(name):
        raise DatasetError(f"{name}: is a directory, not a {kind}")
    try:
        # Default locking on purpose: HDF5 refuses to open one file twice in a process with different locking flags,
        # so anything else would clash with plain h5py users. (HDF5_USE_FILE_LOCKING=FALSE for lockless NFS.)
        return h5py.File(name, "r")
    except OSError as exc:
        # h5py says "file signature not found" or "truncated file"; both mean the file is not a usable dataset.
        raise DatasetError(f"{name}: not a readable HDF5 file (corrupt, truncated or another format): {exc}") from None


@contextlib.contextmanager
def _open(path: str | os.PathLike[str]) -> Iterator[tuple[h5py.File, dict[str, Any]]]:
    """Open a dataset file and check its header; yield the file and its root attrs as Python values."""
    name = str(path)
    h5 = open_hdf5(name)
    with h5:
        try:
            attrs = {k: _py(v) for k, v in h5.attrs.items()}
        except (OSError, RuntimeError, KeyError, ValueError) as exc:
            raise DatasetError(f"{name}: cannot read the root attrs (corrupt file?): {exc}") from None
        if attrs.get("format") != FORMAT:
            raise DatasetError(f"{name}: not a fleetrl episode dataset (format attr is {attrs.get('format')!r}, "
                               f"expected {FORMAT!r})")
        version = attrs.get("format_version")
        if version not in SUPPORTED_VERSIONS:
            raise DatasetError(f"{name}: format_version {version!r} is not supported (this fleetrl reads "
                               f"{', '.join(map(str, SUPPORTED_VERSIONS))}); upgrade fleetrl")
        for key in ("obs_spec", "action_spec"):
            try:
                attrs[key] = json.loads(attrs[key])
            except (KeyError, TypeError, ValueError):
                raise DatasetError(f"{name}: root attr {key!r} is missing or not JSON") from None
        if not isinstance(h5.get(EPISODES), h5py.Group):
            raise DatasetError(f"{name}: has no {EPISODES!r} group")
        yield h5, attrs


def _py(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value


def _episode_names(h5: h5py.File, name: str, attrs: Mapping[str, Any]) -> list[str]:
    names = list(h5[EPISODES].keys())
    bad = [n for n in names if not n.isdigit()]
    if bad:
        raise DatasetError(f"{name}: unexpected entry {EPISODES}/{bad[0]} (episode groups are named 000000, ...)")
    names.sort(key=int)  # numeric, so files with a million or more episodes keep insertion order too
    if len(names) != attrs.get("num_episodes"):
        raise DatasetError(f"{name}: holds {len(names)} episode groups but num_episodes says "
                           f"{attrs.get('num_episodes')!r}; the file was modified or damaged")
    return names


def dataset_info(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Root attrs (specs parsed from JSON) plus ``path`` and checked counts, without reading any array."""
    name = str(path)
    with _open(path) as (h5, attrs):
        names = _episode_names(h5, name, attrs)
        try:
            steps = sum(int(h5[EPISODES][n].attrs["length"]) for n in names)
        except (KeyError, OSError, RuntimeError, ValueError, TypeError) as exc:
            raise DatasetError(f"{name}: cannot read episode lengths (corrupt file?): {exc}") from None
        if steps != attrs.get("total_steps"):
            raise DatasetError(f"{name}: episodes hold {steps} steps but total_steps says {attrs.get('total_steps')!r}")
        return {"path": name, **attrs, "num_episodes": len(names), "total_steps": steps}


def read_episodes(path: str | os.PathLike[str]) -> Iterator[Episode]:
    """Yield the file's episodes in insertion order, one in memory at a time; each is fully validated.

    The header is checked now (a missing or foreign file raises here); episode damage raises when reached."""
    dataset_info(path)
    return _iter_episodes(str(path))


def _iter_episodes(name: str) -> Iterator[Episode]:
    with _open(name) as (h5, attrs):
        spec = (attrs["obs_spec"], attrs["action_spec"])
        for ep_name in _episode_names(h5, name, attrs):
            where = f"{name}: episode {ep_name}"
            try:
                episode = _read_episode(h5[EPISODES][ep_name], where)
            except DatasetError:
                raise
            except (OSError, RuntimeError, KeyError, TypeError, ValueError) as exc:
                raise DatasetError(f"{where}: cannot read (corrupt file?): {exc}") from None
            compare_spec(spec, episode.spec(), where, "the file's obs_spec/action_spec")
            yield episode


def load_episodes(path: str | os.PathLike[str]) -> list[Episode]:
    """All episodes of the file, in insertion order."""
    return list(read_episodes(path))


def _read_episode(group: Any, where: str) -> Episode:
    if not isinstance(group, h5py.Group):
        raise DatasetError(f"{where}: is not a group")
    obs_group = group.get(OBSERVATIONS)
    if not isinstance(obs_group, h5py.Group):
        raise DatasetError(f"{where}: key {OBSERVATIONS!r} is missing")
    arrays: dict[str, np.ndarray] = {}
    for key in STEP_KEYS:
        ds = group.get(key)
        if not isinstance(ds, h5py.Dataset):
            raise DatasetError(f"{where}: key {key!r} is missing")
        arrays[key] = ds[()]
    observations = {}
    for key, ds in obs_group.items():
        if not isinstance(ds, h5py.Dataset):
            raise DatasetError(f"{where}: key {OBSERVATIONS}/{key} is not a dataset")
        observations[key] = ds[()]
    own = {k: _py(v) for k, v in group.attrs.items() if k not in EPISODE_RESERVED}
    episode = Episode._checked(where, observations=observations, attrs=own, **arrays)
    stored = group.attrs.get("length")
    if stored is not None and int(stored) != episode.length:
        raise DatasetError(f"{where}: attr length is {int(stored)} but actions has {episode.length} steps")
    stored_return = group.attrs.get("return")
    if stored_return is not None and not math.isclose(float(stored_return), episode.return_, rel_tol=1e-9,
                                                      abs_tol=1e-9):
        raise DatasetError(f"{where}: attr return is {float(stored_return)} but rewards sum to {episode.return_}")
    return episode
