"""The episode dataset format's constants, :class:`DatasetError`, and :class:`Episode` with its validation.

Also the checks shared by the writer and the readers: caller attrs (:func:`check_attrs`) and per-step specs
(:func:`compare_spec`). The layout is documented in ``docs/datasets.md``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

FORMAT = "fleetrl.episodes"
FORMAT_VERSION = 1
SUPPORTED_VERSIONS = (1,)

EPISODES = "episodes"
OBSERVATIONS = "observations"
STEP_KEYS = ("actions", "rewards", "terminated", "truncated", "success")
# Root attributes the writer owns; caller attrs may not shadow them.
ROOT_RESERVED = frozenset({"format", "format_version", "created", "fleetrl_version", "obs_spec", "action_spec",
                           "num_episodes", "total_steps", "success_rate"})
# Episode attributes the writer owns (derived from the arrays); the rest of an episode group's attrs are its own.
EPISODE_RESERVED = frozenset({"length", "is_success", "return"})

# Images: gzip level 4, one chunk per frame. Measured on 121 rendered 128x128x3 MuJoCo frames (docs/datasets.md):
# gzip-4 writes in ~38 ms and compresses 22x, lzf in ~20 ms and 10x. Writing is a few percent of collection time
# (the env and renderer dominate), files are half the size, and deflate is readable by every HDF5 build while lzf
# exists only in h5py. Per-frame chunks let a loader read single transitions without inflating the episode.
IMAGE_COMPRESSION: dict[str, Any] = {"compression": "gzip", "compression_opts": 4}

_FLOAT_KINDS = "f"
_OBS_KINDS = "fiub"  # float, signed/unsigned int, bool: anything HDF5 stores natively and numpy compares exactly


class DatasetError(ValueError):
    """A dataset file or episode is missing, malformed or cannot be written; the message names the file/key."""


def _is_scalar_attr(value: Any) -> bool:
    return isinstance(value, (str, bool, int, float, np.number, np.bool_, np.str_))


def check_attrs(attrs: Mapping[str, Any], where: str, reserved: frozenset[str]) -> dict[str, Any]:
    """Return ``attrs`` as plain Python scalars, or raise if a key is reserved or a value is not a JSON scalar."""
    out: dict[str, Any] = {}
    for key, value in attrs.items():
        if not isinstance(key, str) or not key or "/" in key:
            raise DatasetError(f"{where}: attr name {key!r} must be a non-empty string without '/'")
        if key in reserved:
            raise DatasetError(f"{where}: attr {key!r} is reserved (written by fleetrl itself)")
        if not _is_scalar_attr(value):
            raise DatasetError(f"{where}: attr {key!r} must be a str, bool, int or float, got {type(value).__name__}")
        out[key] = value.item() if isinstance(value, np.generic) else value
    return out


def _spec(array: np.ndarray) -> dict[str, Any]:
    """Per-step shape and dtype of an array whose first axis is time."""
    return {"shape": list(array.shape[1:]), "dtype": array.dtype.name}


@dataclass(frozen=True, eq=False)
class Episode:
    """One episode of T steps: T+1 observations (reset + one per step), T actions/rewards/flags, and attrs.

    Construction validates (see :meth:`validate`); an invalid episode raises :class:`DatasetError`."""

    observations: dict[str, np.ndarray]
    actions: np.ndarray
    rewards: np.ndarray
    terminated: np.ndarray
    truncated: np.ndarray
    success: np.ndarray
    attrs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.validate()

    @classmethod
    def _checked(cls, where: str, **fields: Any) -> Episode:
        """Build and validate an episode whose errors are prefixed with ``where`` (file and group name)."""
        episode = object.__new__(cls)
        for key, value in fields.items():
            object.__setattr__(episode, key, value)
        episode.validate(where)
        return episode

    @property
    def label(self) -> str:
        """How error messages name this episode: by its seed when it has one."""
        return f"episode (seed={self.attrs['seed']})" if "seed" in self.attrs else "episode"

    def validate(self, where: str | None = None) -> None:
        """Check lengths (T+1 observations, T of everything else, T >= 1), dtypes, finiteness and end flags.

        Errors are :class:`DatasetError` prefixed with ``where`` (default: :attr:`label`) and naming the key."""
        where = where or self.label
        arrays = [("actions", self.actions, np.float32), ("rewards", self.rewards, np.float32),
                  ("terminated", self.terminated, np.bool_), ("truncated", self.truncated, np.bool_),
                  ("success", self.success, np.bool_)]
        for key, array, dtype in arrays:
            if not isinstance(array, np.ndarray):
                raise DatasetError(f"{where}: {key} must be a numpy array, got {type(array).__name__}")
            if array.dtype != dtype:
                raise DatasetError(f"{where}: {key} has dtype {array.dtype}, expected {np.dtype(dtype)}")
        if self.actions.ndim != 2:
            raise DatasetError(f"{where}: actions must have shape (T, A), got {self.actions.shape}")
        length = self.actions.shape[0]
        if length < 1:
            raise DatasetError(f"{where}: actions is empty; an episode needs at least one step")
        for key, array, _ in arrays[1:]:
            if array.shape != (length,):
                raise DatasetError(f"{where}: {key} has shape {array.shape}, but actions has {length} steps")
        if not isinstance(self.observations, Mapping) or not self.observations:
            raise DatasetError(f"{where}: observations must be a non-empty dict of arrays")
        for key, obs in self.observations.items():
            if not isinstance(key, str) or not key or "/" in key or key == ".":
                raise DatasetError(f"{where}: observation key {key!r} must be a non-empty string without '/'")
            if not isinstance(obs, np.ndarray) or obs.dtype.kind not in _OBS_KINDS:
                kind = obs.dtype if isinstance(obs, np.ndarray) else type(obs).__name__
                raise DatasetError(f"{where}: observations/{key} must be a numeric numpy array, got {kind}")
            if obs.ndim < 1 or obs.shape[0] != length + 1:
                raise DatasetError(f"{where}: observations/{key} has shape {obs.shape}; expected leading length "
                                   f"{length + 1} (the reset observation plus one per step of {length})")
        floats = [("actions", self.actions), ("rewards", self.rewards)]
        floats += [(f"observations/{k}", v) for k, v in self.observations.items() if v.dtype.kind in _FLOAT_KINDS]
        for key, array in floats:
            bad = ~np.isfinite(array)
            if bad.any():
                index = tuple(int(i) for i in np.argwhere(bad)[0])
                raise DatasetError(f"{where}: {key} is not finite at index {index} ({array[index]})")
        done = self.terminated | self.truncated
        if done[:-1].any():
            step = int(np.flatnonzero(done[:-1])[0])
            key = "terminated" if self.terminated[step] else "truncated"
            raise DatasetError(f"{where}: {key} is set at step {step} of {length}; only the last step may end it")
        if not done[-1]:
            raise DatasetError(f"{where}: terminated/truncated: the last step ends neither; an episode must end")
        check_attrs(self.attrs, where, EPISODE_RESERVED)

    @property
    def length(self) -> int:
        """Number of steps T."""
        return int(self.actions.shape[0])

    @property
    def is_success(self) -> bool:
        """Whether info["success"] was true after any step."""
        return bool(self.success.any())

    @property
    def return_(self) -> float:
        """Undiscounted sum of rewards."""
        return float(self.rewards.sum(dtype=np.float64))

    def spec(self) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
        """(observation spec, action spec): per-step shapes and dtypes, as stored in the file's root attrs."""
        return {k: _spec(v) for k, v in sorted(self.observations.items())}, _spec(self.actions)



def compare_spec(want: tuple[dict[str, Any], dict[str, Any]], got: tuple[dict[str, Any], dict[str, Any]],
                  where: str, reference: str) -> None:
    """Raise naming the first key whose per-step shape/dtype differs from ``want`` (described as ``reference``)."""
    want_obs, want_action = want
    got_obs, got_action = got
    for key in sorted(set(want_obs) | set(got_obs)):
        if key not in got_obs:
            raise DatasetError(f"{where}: observations/{key} is missing ({reference} has it)")
        if key not in want_obs:
            raise DatasetError(f"{where}: observations/{key} is unexpected ({reference} does not have it)")
        if want_obs[key] != got_obs[key]:
            raise DatasetError(f"{where}: observations/{key} has per-step {_fmt(got_obs[key])}, "
                               f"expected {_fmt(want_obs[key])} like {reference}")
    if want_action != got_action:
        raise DatasetError(f"{where}: actions has per-step {_fmt(got_action)}, "
                           f"expected {_fmt(want_action)} like {reference}")


def _fmt(spec: Mapping[str, Any]) -> str:
    return f"shape {tuple(spec['shape'])} dtype {spec['dtype']}"
