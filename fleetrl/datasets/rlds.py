"""Reading RLDS datasets stored as TFDS build directories (BridgeData, Open X-Embodiment) as fleetrl episodes.

:func:`read_rlds` reads a directory such as ``bridge_dataset/1.0.0/`` (``dataset_info.json``, ``features.json``,
``*.tfrecord-XXXXX-of-XXXXX``) with ``tensorflow_datasets``, imported only when called. Each RLDS episode has a
``steps`` sequence of L steps with ``observation`` (a dict), ``action``, ``reward``, ``is_first``, ``is_last`` and
``is_terminal``; other step fields (``discount``, ``language_instruction``, ...) and ``episode_metadata`` are ignored.

RLDS puts o_t, a_t and r_t (the reward after a_t) in step t. ``final_step`` says what the last step (L-1) is:

- ``"transition"`` (default): a full transition, as in BridgeData, whose last step carries a real action and the
  success reward (Bridge sets ``reward = 1`` and ``is_terminal`` on it). T = L; the actions and rewards are those
  of steps 0..L-1 and the observations are o_0..o_{L-1} followed by o_{L-1} again, since no observation after the
  last action was recorded. The repeated observation is harmless when the episode is terminated, because nothing
  bootstraps from a terminal next-observation; otherwise the episode is truncated, and a learner that bootstraps
  from it gets the last observation seen.
- ``"observation"``: strict RLDS, where the last step only carries the final observation o_{L-1}; its action and
  reward are ignored (and not checked). T = L-1; needs L >= 2.

In both modes ``terminated[-1] = is_terminal[L-1]``, ``truncated[-1] = not terminated[-1]``, and
``success[t] = rewards[t] >= success_reward_threshold`` (default 1.0: Bridge's 0/1 reward marks the successful
last step). ``is_first`` must be set on step 0 only, ``is_last`` on step L-1 only, and ``is_terminal`` on no step
but the last; anything else raises, because it would mean the episode is several episodes or is cut short.
Observations follow the ``obs_keys`` mapping of :func:`fleetrl.datasets.robomimic.map_observations`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from typing import Any, Literal

import numpy as np

from fleetrl.datasets.episode import DatasetError, Episode
from fleetrl.datasets.robomimic import ObsKeys, check_finite, check_obs_keys, map_observations

FinalStep = Literal["transition", "observation"]
TFDS_REQUIREMENT = "tensorflow-datasets==4.9.4"
_STEP_KEYS = ("action", "reward", "is_first", "is_last", "is_terminal")
_OBS = "steps/observation/"


def read_rlds(path: str | os.PathLike[str], split: str = "train", obs_keys: ObsKeys | None = None, *,
              final_step: FinalStep = "transition", success_reward_threshold: float = 1.0) -> Iterator[Episode]:
    """Yield the episodes of one split of a TFDS build directory holding RLDS episodes, one in memory at a time.

    ``split`` is any TFDS split string (``"train"``, ``"val[:10]"``); episodes come in file order and error messages
    count them from 0 within ``split``. ``obs_keys`` maps fleetrl observation keys to lists of ``observation`` keys,
    e.g. ``{"state": ["state"], "image": ["image_0"]}``; None keeps every numeric observation key under its own name.
    Images that no entry uses are not decoded. ``final_step`` and the flag rules are in the module docstring. Each
    episode's attrs are ``{"source": "rlds", "split": split, "episode_index": i}``.

    The directory, the split and the schema (``features.json``: the step fields and the mapped observation keys) are
    checked now; per-episode problems (shapes, NaN, flags) raise when the episode is reached, naming the path, the
    episode index and the key. Every error is a :class:`DatasetError`."""
    name = str(path)
    keys = check_obs_keys(obs_keys)
    if final_step not in ("transition", "observation"):
        raise DatasetError(f"final_step must be 'transition' or 'observation', got {final_step!r}")
    tfds, tf = _import_tfds(name)
    if not os.path.isdir(name):
        raise DatasetError(f"{name}: no such directory" if not os.path.exists(name) else
                           f"{name}: is not a directory (an RLDS/TFDS dataset is a directory with dataset_info.json)")
    if not os.path.isfile(os.path.join(name, "dataset_info.json")):
        raise DatasetError(f"{name}: not a TFDS dataset directory (no dataset_info.json); point at the version "
                           f"directory, e.g. bridge_dataset/1.0.0")
    try:
        builder = tfds.builder_from_directory(name)
        obs_features = _step_features(builder.info.features, name)
    except DatasetError:
        raise
    except (OSError, ValueError, KeyError, TypeError, AttributeError, tf.errors.OpError) as exc:
        raise DatasetError(f"{name}: cannot read the TFDS dataset info: {exc}") from None
    if keys is None:
        keys = {k: [k] for k, f in sorted(obs_features.items()) if _numeric(f, tf)}
        if not keys:
            raise DatasetError(f"{name}: {_OBS[:-1]} has no numeric keys to read")
    needed = list(dict.fromkeys(k for ks in keys.values() for k in ks))
    for key in needed:
        if key not in obs_features:
            raise DatasetError(f"{name}: {_OBS}{key} is missing (observation has {sorted(obs_features)})")
        if not _numeric(obs_features[key], tf):
            raise DatasetError(f"{name}: {_OBS}{key} is not a numeric tensor ({obs_features[key]!r})")
    # Unused images (Bridge has image_0..image_3) are left encoded: decoding is most of the reading cost.
    skip = {k: tfds.decode.SkipDecoding() for k, f in obs_features.items()
            if k not in needed and isinstance(f, (tfds.features.Image, tfds.features.Video))}
    try:
        # One shard at a time, in order, so "episode i" is the same episode on every read.
        ds = builder.as_dataset(split=split, shuffle_files=False, decoders={"steps": {"observation": skip}},
                                read_config=tfds.ReadConfig(interleave_cycle_length=1))
    except (ValueError, KeyError, TypeError, AssertionError, tf.errors.OpError) as exc:
        raise DatasetError(f"{name}: cannot read split {split!r} (the dataset has {sorted(builder.info.splits)}): "
                           f"{exc}") from None

    def select(episode: dict[str, Any]) -> dict[str, Any]:
        # All L steps batched into one element. get_single_element leaves no half-read inner iterator behind (TF 2.15
        # hangs destroying one), and the fields are picked afterwards: a map on the inner dataset hangs there too.
        steps = episode["steps"].batch(1 << 30).get_single_element()
        return {"observation": {k: steps["observation"][k] for k in needed}, **{k: steps[k] for k in _STEP_KEYS}}

    return _iter_episodes(name, split, ds.map(select), tf, keys, final_step, float(success_reward_threshold))


def _import_tfds(name: str) -> tuple[Any, Any]:
    try:
        import tensorflow as tf
        import tensorflow_datasets as tfds
    except ImportError as exc:
        raise DatasetError(f"{name}: reading RLDS/TFDS datasets needs tensorflow_datasets ({exc}); "
                           f"pip install '{TFDS_REQUIREMENT}'") from None
    return tfds, tf


def _step_features(features: Any, name: str) -> dict[str, Any]:
    """The ``observation`` features of the steps, after checking that the dataset looks like RLDS."""
    steps = features["steps"] if "steps" in features.keys() else None
    step_features = getattr(steps, "feature", None)
    if step_features is None or not hasattr(step_features, "keys"):
        raise DatasetError(f"{name}: not an RLDS dataset (features have no 'steps' sequence of dicts)")
    for key in ("observation", *_STEP_KEYS):
        if key not in step_features.keys():
            raise DatasetError(f"{name}: steps/{key} is missing (steps have {sorted(step_features.keys())})")
    observation = step_features["observation"]
    if not hasattr(observation, "keys"):
        raise DatasetError(f"{name}: steps/observation is not a dict of features ({observation!r})")
    return dict(observation.items())


def _numeric(feature: Any, tf: Any) -> bool:
    dtype = getattr(feature, "dtype", None)
    if isinstance(dtype, dict) or dtype is None:
        return False  # a nested dict of features
    return np.dtype(tf.as_dtype(dtype).as_numpy_dtype).kind in "fiub"


def _iter_episodes(name: str, split: str, ds: Any, tf: Any, obs_keys: dict[str, list[str]], final_step: FinalStep,
                   threshold: float) -> Iterator[Episode]:
    iterator = ds.as_numpy_iterator()
    index = 0
    while True:
        where = f"{name}: episode {index}"
        try:
            steps = next(iterator)
        except StopIteration:
            return
        except tf.errors.OpError as exc:
            # A damaged record, or an episode with no steps (get_single_element of an empty batch).
            detail = re.sub(r"\{\{.*?\}\}|\[\[.*?\]\]|\[Op:.*", "", exc.message, flags=re.S).strip()  # TF's node noise
            raise DatasetError(f"{where}: cannot read (corrupt file or empty episode?): {detail}") from None
        yield _episode(steps, where, obs_keys, final_step, threshold,
                       {"source": "rlds", "split": split, "episode_index": index})
        index += 1


def _episode(steps: dict[str, Any], where: str, obs_keys: dict[str, list[str]], final_step: FinalStep,
             threshold: float, attrs: dict[str, Any]) -> Episode:
    """Convert one episode's batched steps (every field with leading length L) following the module's rules."""
    flags = {k: np.asarray(steps[k]) for k in ("is_first", "is_last", "is_terminal")}
    length = len(flags["is_first"])
    if isinstance(steps["action"], dict):
        raise DatasetError(f"{where}: steps/action is a dict of {sorted(steps['action'])}; only vector actions "
                           f"(one tensor per step) can be read")
    action, reward = np.asarray(steps["action"]), np.asarray(steps["reward"])
    for key, array, want in (("action", action, 2), ("reward", reward, 1), *((k, v, 1) for k, v in flags.items())):
        if array.ndim != want or array.shape[0] != length:
            per_step = "a vector (A,)" if want == 2 else "a scalar"
            raise DatasetError(f"{where}: steps/{key} has shape {array.shape}, expected {per_step} per step "
                               f"for each of {length} steps")
    first, last, terminal = (flags[k].astype(bool) for k in ("is_first", "is_last", "is_terminal"))
    if not first[0] or first[1:].any():
        raise DatasetError(f"{where}: steps/is_first is {first.astype(int).tolist()}; expected step 0 only")
    if not last[-1] or last[:-1].any():
        raise DatasetError(f"{where}: steps/is_last is {last.astype(int).tolist()}; expected the last step only")
    if terminal[:-1].any():
        raise DatasetError(f"{where}: steps/is_terminal is set at step {int(np.flatnonzero(terminal)[0])} of "
                           f"{length}; only the last step may be terminal")
    horizon = length if final_step == "transition" else length - 1
    if horizon < 1:
        raise DatasetError(f"{where}: has {length} step; final_step='observation' needs at least 2")

    source = {}
    for key, array in steps["observation"].items():
        check_finite(array, where, _OBS + key)
        # "transition": the observation after the last action was never recorded; repeat o_{L-1} (module docstring).
        source[key] = np.concatenate([array, array[-1:]]) if final_step == "transition" else array
    observations = map_observations(source, obs_keys, where, _OBS)
    actions, rewards = action[:horizon], reward[:horizon]
    check_finite(actions, where, "steps/action")
    check_finite(rewards, where, "steps/reward")
    terminated = np.zeros(horizon, dtype=bool)
    terminated[-1] = terminal[-1]
    truncated = np.zeros(horizon, dtype=bool)
    truncated[-1] = not terminal[-1]
    rewards = rewards.astype(np.float32)
    return Episode._checked(where, observations=observations, actions=actions.astype(np.float32), rewards=rewards,
                            terminated=terminated, truncated=truncated, success=rewards >= np.float32(threshold),
                            attrs=attrs)
