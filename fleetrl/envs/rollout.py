"""Rolling out a policy in a registered env: episode datasets (``fleetrl collect``) and videos (``fleetrl view``).

Policies by name: ``scripted`` (the task's scripted expert, WidowX tasks and robosuite Lift; ``noise`` degrades
it, see :mod:`fleetrl.envs.widowx.experts` and :mod:`fleetrl.envs.robosuite_expert`), ``random`` (uniform actions
in [-1, 1]) and ``teleop`` (a person with an input device, paced at a control rate: demonstrations before
training, HIL-SERL style; the device's re-record key drops the episode and repeats its seed, success / failure end
it, recorded in the episode's ``label`` attribute).
Episode ``i`` is reset with seed ``seed + i``, and the policy is seeded the same way, so a dataset is reproducible
from its attributes.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import gymnasium as gym
import numpy as np

import fleetrl.envs  # noqa: F401  (registers the ids)
from fleetrl.datasets import DatasetError, Episode, EpisodeFileWriter
from fleetrl.envs.robosuite_env import RobosuiteEnv
from fleetrl.envs.robosuite_expert import RobosuiteLiftExpert
from fleetrl.envs.widowx.env import WidowXEnv
from fleetrl.envs.widowx.experts import ScriptedExpert

POLICIES = ("scripted", "random", "teleop")


class _Rerecord(Exception):
    """The person asked to throw the episode away and do it again."""


class RolloutError(ValueError):
    """A bad ``--env`` / ``--policy`` / ``--noise`` / ``--out``: nothing was collected."""


class _Policy:
    """``reset(seed)`` then ``act(obs)``."""

    def __init__(self, name: str, env: gym.Env, noise: float, device: Any = None):
        self.name, self.noise, self._space = name, noise, env.action_space
        self._expert: ScriptedExpert | RobosuiteLiftExpert | None = None
        self._rng = np.random.default_rng()
        self.device, self.events = device, []
        if name == "teleop":
            space = env.action_space
            if device is None:
                raise RolloutError("--policy teleop: needs an input device (--teleop keyboard|gamepad|spacemouse)")
            if space.shape != (7,) or not (np.all(space.low == -1) and np.all(space.high == 1)):
                name_of = env.spec.id if env.spec else env
                raise RolloutError(f"--teleop: devices give 7-D Bridge actions in [-1, 1]; {name_of} takes {space}")
        if name == "scripted":
            base = env.unwrapped
            if isinstance(base, WidowXEnv):
                self._expert = ScriptedExpert(base.task, noise=noise)
            elif isinstance(base, RobosuiteEnv) and base.task == "Lift":
                if not base.privileged:
                    raise RolloutError("--policy scripted: the robosuite Lift expert reads the privileged 'object' "
                                       "observation; make the env with privileged=true")
                self._expert = RobosuiteLiftExpert(noise=noise)
            else:
                raise RolloutError(f"--policy scripted: no scripted expert for {env.spec.id if env.spec else base}; "
                                   "experts exist for the WidowX tasks (fleetrl envs lists them) and robosuite Lift; "
                                   "use --policy random")

    def reset(self, seed: int) -> None:
        self._rng = np.random.default_rng(seed)
        if self._expert is not None:
            self._expert.reset(seed)

    def act(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        if self.device is not None:  # the person always acts while demonstrating (no hand-over)
            state = self.device.read()
            self.events += state.events
            return np.asarray(state.action, np.float32)
        if self._expert is not None:
            return self._expert.act(obs)
        return self._rng.uniform(-1.0, 1.0, self._space.shape).astype(np.float32)


def make_rollout_env(env_id: str, policy: str, noise: float, render_mode: str | None = None, device: Any = None,
                     **env_kwargs: Any) -> tuple[gym.Env, _Policy]:
    """The env and the named policy; raises :class:`RolloutError` naming the bad option."""
    if policy not in POLICIES:
        raise RolloutError(f"--policy: unknown policy {policy!r}; known: {list(POLICIES)}")
    if not 0.0 <= noise <= 2.0:
        raise RolloutError(f"--noise: must be in [0, 2], got {noise}")
    try:
        env = gym.make(env_id, render_mode=render_mode, **env_kwargs)
    except gym.error.Error as exc:
        raise RolloutError(f"--env: cannot make {env_id!r}: {exc}") from exc
    except (TypeError, ValueError) as exc:  # the env refused a keyword or its value
        raise RolloutError(f"--env-kwarg: {env_id} with {env_kwargs}: {exc}") from exc
    try:
        return env, _Policy(policy, env, noise, device)
    except BaseException:
        env.close()
        raise


def run_episode(env: gym.Env, policy: _Policy, seed: int, on_frame: Callable[[], None] | None = None,
                rate_hz: float | None = None) -> Episode:
    """One episode, reset with ``seed``, as an :class:`Episode` (observations copied per step); paced at
    ``rate_hz`` when given (a person demonstrating). Raises :class:`_Rerecord` if the person asked for it."""
    obs, _ = env.reset(seed=seed)
    policy.reset(seed)
    policy.events.clear()
    label = None
    next_at = time.monotonic()
    if on_frame is not None:
        on_frame()
    observations = {k: [np.array(v)] for k, v in obs.items()}
    actions, rewards, terms, truncs, successes = [], [], [], [], []
    while True:
        if rate_hz:
            next_at += 1.0 / rate_hz
            time.sleep(max(0.0, next_at - time.monotonic()))
        action = policy.act(obs)
        obs, reward, terminated, truncated, info = env.step(action)
        if "rerecord" in policy.events:
            raise _Rerecord
        if label is None and ("success" in policy.events or "failure" in policy.events):
            label = next(e for e in policy.events if e in ("success", "failure"))
            truncated = truncated or not terminated  # the person ended it: not a terminal state of the env
        if on_frame is not None:
            on_frame()
        for k, v in obs.items():
            observations[k].append(np.array(v))
        actions.append(np.asarray(action, np.float32))
        rewards.append(reward)
        terms.append(terminated)
        truncs.append(truncated)
        successes.append(bool(info.get("success", False)))
        if terminated or truncated:
            break
    return Episode(observations={k: np.stack(v) for k, v in observations.items()},
                   actions=np.stack(actions), rewards=np.asarray(rewards, np.float32),
                   terminated=np.asarray(terms, bool), truncated=np.asarray(truncs, bool),
                   success=np.asarray(successes, bool),
                   attrs={"seed": int(seed), **({"label": label} if label else {})})


class _InterruptGuard:
    """Ctrl-C (SIGINT) interrupts an episode being stepped, but is only noted while an episode is written or
    reported, so the file always ends on a complete episode. Only the main thread can own signal handlers;
    elsewhere SIGINT keeps Python's default behaviour."""

    def __init__(self) -> None:
        self.requested, self._stepping, self._previous = False, False, None

    def __enter__(self) -> _InterruptGuard:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)

    def _handle(self, signum: int, frame: Any) -> None:
        self.requested = True
        if self._stepping:
            raise KeyboardInterrupt

    @contextlib.contextmanager
    def episode(self) -> Iterator[None]:
        self._stepping = True
        try:
            if self.requested:
                raise KeyboardInterrupt
            yield
        finally:
            self._stepping = False


def collect(env_id: str, episodes: int, out: str | os.PathLike[str], policy: str = "scripted", noise: float = 0.0,
            seed: int = 0, overwrite: bool = False, progress: Callable[[int, Episode], None] | None = None,
            device: Any = None, rate_hz: float | None = None, **env_kwargs: Any) -> dict[str, Any]:
    """Write ``episodes`` episodes to ``out`` (HDF5, see docs/datasets.md). Bad options and a bad or existing
    ``out`` fail before the first step. Ctrl-C keeps the episodes finished so far: the file is closed with them
    (an interrupted episode is dropped) and the summary says ``interrupted``."""
    if episodes < 1:
        raise RolloutError(f"--episodes: must be at least 1, got {episodes}")
    env, pol = make_rollout_env(env_id, policy, noise, device=device, **env_kwargs)
    attrs = {"env_id": env_id, "policy": policy, "noise": float(noise), "seed": int(seed),
             "env_kwargs": repr(sorted(env_kwargs.items()))}
    done, successes, rerecorded = 0, 0, 0
    guard = _InterruptGuard()
    try:
        with guard, EpisodeFileWriter(out, attrs, overwrite=overwrite) as writer:
            i = 0
            while i < episodes:
                try:
                    with guard.episode():
                        episode = run_episode(env, pol, seed + i, rate_hz=rate_hz)
                except _Rerecord:  # the same start again
                    rerecorded += 1
                    continue
                except KeyboardInterrupt:
                    guard.requested = True  # the unfinished episode is dropped
                    break
                writer.add(episode)  # a Ctrl-C here is held until the episode is written
                done += 1
                successes += episode.is_success
                if progress is not None:
                    try:
                        progress(i, episode)
                    except KeyboardInterrupt:
                        guard.requested = True
                if guard.requested:
                    break
                i += 1
            if done == 0:
                writer.abort()
    finally:
        env.close()
    interrupted = guard.requested
    return {"out": str(pathlib.Path(out)) if done else None, "episodes": done, "success_rate": successes / max(done, 1),
            "interrupted": interrupted, **({"rerecorded": rerecorded} if policy == "teleop" else {})}


def record_video(env_id: str, out: str | os.PathLike[str], policy: str = "scripted", noise: float = 0.0,
                 seed: int = 0, size: int = 256, fps: int = 5, **env_kwargs: Any) -> dict[str, Any]:
    """Render one episode to ``out`` (.mp4 or .gif) from the env's ``render()``."""
    path = pathlib.Path(out)
    if path.suffix.lower() not in (".mp4", ".gif"):
        raise RolloutError(f"--out {path}: the video must end in .mp4 or .gif")
    if not path.parent.is_dir():
        raise RolloutError(f"--out {path}: directory {path.parent} does not exist")
    env_kwargs.setdefault("render_size", size)  # every fleetrl env takes it (WidowX and robosuite)
    env, pol = make_rollout_env(env_id, policy, noise, render_mode="rgb_array", **env_kwargs)
    frames: list[np.ndarray] = []
    try:
        episode = run_episode(env, pol, seed, on_frame=lambda: frames.append(np.asarray(env.render())))
    finally:
        env.close()
    import imageio.v2 as imageio

    if path.suffix.lower() == ".gif":
        imageio.mimsave(path, frames, duration=1000 / fps, loop=0)
    else:
        imageio.mimwrite(path, frames, fps=fps, macro_block_size=1)
    return {"out": str(path), "frames": len(frames), "steps": episode.length, "success": episode.is_success,
            "return": episode.return_}


__all__ = ["POLICIES", "DatasetError", "RolloutError", "collect", "make_rollout_env", "record_video", "run_episode"]
