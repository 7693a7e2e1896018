"""Offline datasets of any supported format as transition rows of the run's schema.

:func:`open_dataset` picks the reader (fleetrl's own episode files, robomimic HDF5, RLDS / TFDS directories) and
yields :class:`Episode` objects; :func:`episode_rows` checks one episode against the run's
:class:`~fleetrl.types.TransitionSpec` and turns it into the step rows the replay layer stores, with Monte-Carlo
returns. Every error is a :class:`DatasetError` naming the dataset, the episode and the key. Nothing here knows
about Reverb.
"""

from __future__ import annotations

import itertools
import os
import pathlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import h5py
import numpy as np

from fleetrl.datasets.episode import DatasetError, Episode
from fleetrl.types import TransitionSpec

#: Offline transitions carry this actor id (online actors count from 0).
OFFLINE_ACTOR_ID = -1
FORMATS = ("fleetrl", "robomimic", "rlds")


def detect_format(path: str | os.PathLike[str]) -> str:
    """``rlds`` for a directory, ``robomimic`` for an HDF5 file with a ``data`` group, else ``fleetrl``."""
    p = pathlib.Path(path)
    if p.is_dir():
        return "rlds"
    if not p.is_file():
        raise DatasetError(f"{p}: no such dataset file or directory")
    try:
        with h5py.File(p, "r") as h5:
            return "robomimic" if "data" in h5 and "episodes" not in h5 else "fleetrl"
    except OSError as exc:
        raise DatasetError(f"{p}: not an HDF5 file or RLDS directory ({exc})") from exc


def open_dataset(path: str | os.PathLike[str], format: str = "auto",
                 obs_keys: Mapping[str, Sequence[str]] | None = None, split: str = "train",
                 max_episodes: int | None = None) -> Iterator[Episode]:
    """The episodes of one dataset, lazily, in file order (at most ``max_episodes``)."""
    fmt = detect_format(path) if format == "auto" else format
    if fmt == "fleetrl":
        if obs_keys is not None:
            raise DatasetError(f"{path}: obs_keys applies to robomimic and RLDS datasets; a fleetrl file's keys "
                               "must equal the env's")
        from fleetrl.datasets.reader import read_episodes

        episodes: Iterator[Episode] = read_episodes(path)
    elif fmt == "robomimic":
        from fleetrl.datasets.robomimic import read_robomimic

        episodes = read_robomimic(path, obs_keys)
    elif fmt == "rlds":
        from fleetrl.datasets.rlds import read_rlds

        episodes = read_rlds(path, split=split, obs_keys=obs_keys)
    else:
        raise DatasetError(f"{path}: unknown dataset format {fmt!r} (known: {', '.join(FORMATS)})")
    return itertools.islice(episodes, max_episodes)


def check_episode(spec: TransitionSpec, episode: Episode, where: str) -> None:
    """The episode fits the run: every observation key of the spec with its shape, a castable dtype, and actions
    of the spec's shape inside the normalised action box [-1, 1]."""
    for key, want in spec.obs.items():
        if key not in episode.observations:
            raise DatasetError(f"{where}: observations/{key} is missing (the env observes {sorted(spec.obs)}; the "
                               f"dataset has {sorted(episode.observations)})")
        got = episode.observations[key]
        if tuple(got.shape[1:]) != want.shape:
            raise DatasetError(f"{where}: observations/{key} has per-step shape {tuple(got.shape[1:])}, the env's "
                               f"is {want.shape}")
        if not np.can_cast(got.dtype, want.dtype, casting="same_kind"):
            raise DatasetError(f"{where}: observations/{key} has dtype {got.dtype}, the env's is {want.dtype}")
    if tuple(episode.actions.shape[1:]) != spec.action.shape:
        raise DatasetError(f"{where}: actions have shape {tuple(episode.actions.shape[1:])} per step, the env's "
                           f"action space has {spec.action.shape}")
    outside = np.abs(episode.actions) > 1.0 + 1e-6
    if outside.any():
        t, i = (int(x) for x in np.argwhere(outside)[0])
        raise DatasetError(f"{where}: actions[{t}, {i}] = {episode.actions[t, i]} is outside [-1, 1] (fleetrl "
                           "stores actions normalised to the env's action box)")


def episode_where(section: str, index: int, path: str, episode_index: int, episode: Episode) -> str:
    """How refusals name an episode of a configured dataset: ``offline.datasets[0] PATH: episode 3 (LABEL)``."""
    return f"{section}.datasets[{index}] {path}: episode {episode_index} ({episode.label})"


def check_first_episodes(spec: TransitionSpec, datasets: Sequence[Any], section: str) -> None:
    """The first episode of each dataset (``DatasetConfig`` items of config section ``section``, e.g. ``offline``)
    fits ``spec``, before any run directory or process exists; the replay's loader checks every episode later. Errors
    name the dataset, the episode and the key as that loader's do."""
    for d, source in enumerate(datasets):
        for episode in itertools.islice(open_dataset(source.path, source.format, source.obs_keys, source.split,
                                                     source.max_episodes), 1):
            check_episode(spec, episode, episode_where(section, d, source.path, 0, episode))


def episode_rows(spec: TransitionSpec, episode: Episode, where: str, episode_id: int,
                 returns_fn: Callable[[np.ndarray, bool], np.ndarray]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """``(rows, padding_row)`` of one checked episode, as an actor would have produced them; ``mc_return`` from
    ``returns_fn`` (the learner's reward units)."""
    check_episode(spec, episode, where)
    terminated_last = bool(episode.terminated[-1])
    returns = returns_fn(episode.rewards, terminated_last)
    rows = []
    for t in range(episode.length):
        obs = {k: episode.observations[k][t] for k in spec.obs}
        rows.append(spec.make_step(
            obs, episode.actions[t], reward=float(episode.rewards[t]), terminated=bool(episode.terminated[t]),
            truncated=bool(episode.truncated[t]), mc_return=float(returns[t]), is_intervention=False,
            policy_version=-1, actor_id=OFFLINE_ACTOR_ID, episode_id=episode_id))
    final = {k: episode.observations[k][episode.length] for k in spec.obs}
    return rows, spec.padding_step(final, OFFLINE_ACTOR_ID, episode_id)
