"""Reading robomimic HDF5 demonstration files as fleetrl :class:`~fleetrl.datasets.episode.Episode` objects.

:func:`read_robomimic` reads the layout robomimic's ``dataset_states_to_obs.py`` writes::

    data/                 attrs: env_args (JSON), total
    data/demo_<i>/        attr num_samples (= T); sorted numerically: demo_2 before demo_10
        obs/<key>         (T, ...)   observation before step t
        next_obs/<key>    (T, ...)   observation after step t
        actions           (T, A)
        rewards           (T,)
        dones             (T,)
    mask/<filter_key>     optional: names of the demos in a subset (e.g. "train", "valid")

Conversion rules (also in ``docs/datasets.md``):

- ``observations[k]`` is ``obs/<key>[0..T-1]`` followed by ``next_obs/<key>[T-1]``: T+1 rows. Only the last row of
  ``next_obs`` is read, so an image costs one extra frame.
- ``terminated[-1] = dones[-1] != 0``, ``truncated[-1] = not terminated[-1]``, every earlier step neither.
  robomimic's ``done_mode`` 0 and 2 also set ``dones`` on intermediate success states; those do not end a fleetrl
  episode (the demo goes on), they only show up through ``success``.
- ``success[t] = rewards[t] >= success_reward_threshold`` (default 1.0). robosuite's sparse reward is 1 exactly on
  success states, and its shaped reward (``reward_scale=1``) reaches 1 only on success, so the rule fits both.
  ``dones`` is not used: under ``done_mode=1`` it is set at the end of every demo, successful or not.
- ``actions`` and ``rewards`` are cast to float32.

The observation key mapping (``obs_keys``) is shared with :mod:`fleetrl.datasets.rlds`; see
:func:`map_observations`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping, Sequence

import h5py
import numpy as np

from fleetrl.datasets.episode import DatasetError, Episode

ObsKeys = Mapping[str, Sequence[str]]
_DEMO = re.compile(r"demo_(\d+)")
_NO_OBS = ("key 'obs' is missing (a raw robomimic demo.hdf5 holds only states: extract observations with robomimic's "
           "dataset_states_to_obs.py)")


def check_obs_keys(obs_keys: ObsKeys | None) -> dict[str, list[str]] | None:
    """Return ``obs_keys`` as a plain dict of lists, or raise :class:`DatasetError` if it is malformed."""
    if obs_keys is None:
        return None
    if not isinstance(obs_keys, Mapping) or not obs_keys:
        raise DatasetError(f"obs_keys must be a non-empty mapping of fleetrl key -> dataset keys, got {obs_keys!r}")
    out: dict[str, list[str]] = {}
    for name, keys in obs_keys.items():
        if not isinstance(name, str) or not name or "/" in name:
            raise DatasetError(f"obs_keys: fleetrl key {name!r} must be a non-empty string without '/'")
        # A bare string is a Sequence too; "image": "agentview_image" would otherwise mean 15 one-letter keys.
        if isinstance(keys, (str, bytes)) or not isinstance(keys, Sequence) or not keys:
            raise DatasetError(f"obs_keys[{name!r}] must be a non-empty list of dataset keys, got {keys!r}")
        if not all(isinstance(k, str) and k for k in keys):
            raise DatasetError(f"obs_keys[{name!r}]: dataset keys must be non-empty strings, got {keys!r}")
        out[name] = list(keys)
    return out


def is_image(array: np.ndarray) -> bool:
    """Whether a (N, ...) array holds images: uint8 with at least two per-step dims, e.g. (N, H, W, 3)."""
    return array.dtype == np.uint8 and array.ndim >= 3


def check_finite(array: np.ndarray, where: str, key: str) -> None:
    """Raise naming ``key`` and the first bad index if a float array holds NaN or inf."""
    if array.dtype.kind == "f":
        bad = ~np.isfinite(array)
        if bad.any():
            index = tuple(int(i) for i in np.argwhere(bad)[0])
            raise DatasetError(f"{where}: {key} is not finite at index {index} ({array[index]})")


def map_observations(source: Mapping[str, np.ndarray], obs_keys: Mapping[str, list[str]], where: str,
                     prefix: str) -> dict[str, np.ndarray]:
    """Build fleetrl observations from dataset arrays of equal leading length N, following ``obs_keys``.

    An entry with one dataset key copies it with its per-step shape; float dtypes become float32, others (uint8
    images, ints, bools) are kept. An entry with several keys concatenates them, in the listed order, each flattened
    per step and cast to float32; none of them may be an image (:func:`is_image`). ``prefix`` is how errors name a
    dataset key (``obs/`` or ``steps/observation/``)."""
    out: dict[str, np.ndarray] = {}
    for name, keys in obs_keys.items():
        arrays = [source[k] for k in keys]
        if len(keys) == 1:
            array = arrays[0]
            out[name] = array.astype(np.float32) if array.dtype.kind == "f" else array
            continue
        for key, array in zip(keys, arrays, strict=True):
            if is_image(array) or array.dtype.kind not in "fiub":
                raise DatasetError(f"{where}: {prefix}{key} ({array.dtype} {array.shape[1:]}) cannot be concatenated "
                                   f"into observations/{name}; map image keys alone, e.g. {{{name!r}: [{key!r}]}}")
        out[name] = np.concatenate([a.reshape(len(a), -1).astype(np.float32) for a in arrays], axis=1)
    return out


def read_robomimic(path: str | os.PathLike[str], obs_keys: ObsKeys | None = None, *, filter_key: str | None = None,
                   success_reward_threshold: float = 1.0) -> Iterator[Episode]:
    """Yield a robomimic HDF5 file's demos (numeric order) as validated episodes, one in memory at a time.

    ``obs_keys`` maps fleetrl observation keys to lists of ``obs/`` keys (see :func:`map_observations`), e.g.
    ``{"state": ["robot0_eef_pos", "robot0_eef_quat", "robot0_gripper_qpos"], "image": ["agentview_image"]}``;
    None keeps every numeric ``obs/`` key of the first demo under its own name. ``filter_key`` reads only the demos
    listed in ``mask/<filter_key>``. Each episode's attrs are ``{"source": "robomimic", "demo": "demo_<i>"}``.

    The file, its ``data`` group and ``obs_keys`` are checked now; a damaged demo raises when it is reached. Errors
    are :class:`DatasetError` naming the file, the demo and the key."""
    name = str(path)
    keys = check_obs_keys(obs_keys)
    with _open(name) as h5:
        demos = _demo_names(h5, name, filter_key)
        if keys is None and demos:
            # Default: the first demo's numeric obs/ keys, each under its own name; later demos must have them all.
            obs_group = h5["data"][demos[0]].get("obs")
            if not isinstance(obs_group, h5py.Group):
                raise DatasetError(f"{name}: {demos[0]}: {_NO_OBS}")
            keys = {k: [k] for k, v in sorted(obs_group.items()) if isinstance(v, h5py.Dataset) and v.dtype.kind in
                    "fiub"}
    return _iter_demos(name, demos, keys or {}, float(success_reward_threshold))


def _open(name: str) -> h5py.File:
    from fleetrl.datasets.reader import open_hdf5

    h5 = open_hdf5(name, "robomimic HDF5 file")
    if not isinstance(h5.get("data"), h5py.Group):
        h5.close()
        raise DatasetError(f"{name}: not a robomimic dataset (no 'data' group)")
    return h5


def _demo_names(h5: h5py.File, name: str, filter_key: str | None) -> list[str]:
    names = list(h5["data"].keys())
    bad = [n for n in names if not _DEMO.fullmatch(n)]
    if bad:
        raise DatasetError(f"{name}: unexpected entry data/{bad[0]} (robomimic demos are named demo_0, demo_1, ...)")
    names.sort(key=lambda n: int(n[5:]))  # numeric: demo_2 before demo_10, as robomimic itself orders them
    if filter_key is None:
        return names
    mask = h5.get(f"mask/{filter_key}")
    if not isinstance(mask, h5py.Dataset):
        have = sorted(h5["mask"].keys()) if isinstance(h5.get("mask"), h5py.Group) else []
        raise DatasetError(f"{name}: filter key mask/{filter_key} is missing (the file has {have or 'no masks'})")
    wanted = {v.decode() if isinstance(v, bytes) else str(v) for v in mask[()]}
    missing = sorted(wanted - set(names))
    if missing:
        raise DatasetError(f"{name}: mask/{filter_key} lists {missing[0]}, which is not in data/")
    return [n for n in names if n in wanted]


def _iter_demos(name: str, demos: list[str], obs_keys: dict[str, list[str]],
                threshold: float) -> Iterator[Episode]:
    with _open(name) as h5:
        for demo in demos:
            where = f"{name}: {demo}"
            try:
                yield _read_demo(h5["data"][demo], where, obs_keys, threshold, demo)
            except DatasetError:
                raise
            except (OSError, RuntimeError, KeyError, TypeError, ValueError) as exc:
                raise DatasetError(f"{where}: cannot read (corrupt file?): {exc}") from None


def _dataset(group: h5py.Group, key: str, where: str) -> h5py.Dataset:
    ds = group.get(key)
    if not isinstance(ds, h5py.Dataset):
        raise DatasetError(f"{where}: key {key!r} is missing")
    return ds


def _read_demo(group: h5py.Group, where: str, obs_keys: dict[str, list[str]], threshold: float,
               demo: str) -> Episode:
    actions = _dataset(group, "actions", where)[()]
    if actions.ndim != 2 or actions.shape[0] < 1:
        raise DatasetError(f"{where}: actions has shape {actions.shape}, expected (T, A) with T >= 1")
    length = actions.shape[0]
    steps = {"actions": actions}
    for key in ("rewards", "dones"):
        steps[key] = _dataset(group, key, where)[()]
        if steps[key].shape != (length,):
            raise DatasetError(f"{where}: {key} has shape {steps[key].shape}, but actions has {length} steps")
    for key in ("actions", "rewards"):
        check_finite(steps[key], where, key)
    num_samples = group.attrs.get("num_samples")
    if num_samples is not None and int(num_samples) != length:
        raise DatasetError(f"{where}: attr num_samples is {int(num_samples)} but actions has {length} steps")

    obs_group = group.get("obs")
    if not isinstance(obs_group, h5py.Group):
        raise DatasetError(f"{where}: {_NO_OBS}")
    source = {}
    for key in dict.fromkeys(k for keys in obs_keys.values() for k in keys):
        ds = obs_group.get(key)
        if not isinstance(ds, h5py.Dataset):
            raise DatasetError(f"{where}: key 'obs/{key}' is missing (obs/ has {sorted(obs_group)})")
        obs = ds[()]
        last = _dataset(group, f"next_obs/{key}", where)
        if obs.ndim < 1 or obs.shape[0] != length:
            raise DatasetError(f"{where}: obs/{key} has shape {obs.shape}, but actions has {length} steps")
        if last.shape != obs.shape:
            raise DatasetError(f"{where}: next_obs/{key} has shape {last.shape}, but obs/{key} has {obs.shape}")
        final = last[length - 1]  # one row: for images, one frame rather than the whole demo
        check_finite(obs, where, f"obs/{key}")
        check_finite(final, where, f"next_obs/{key}[{length - 1}]")
        source[key] = np.concatenate([obs, final[None]], axis=0)
    observations = map_observations(source, obs_keys, where, "obs/")

    rewards = steps["rewards"].astype(np.float32)
    terminated = np.zeros(length, dtype=bool)
    terminated[-1] = bool(steps["dones"][-1])
    return Episode._checked(where, observations=observations, actions=actions.astype(np.float32), rewards=rewards,
                            terminated=terminated, truncated=~terminated & (np.arange(length) == length - 1),
                            success=rewards >= np.float32(threshold), attrs={"source": "robomimic", "demo": demo})
