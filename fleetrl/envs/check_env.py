"""Contract checker for fleetrl envs (in the spirit of Stable-Baselines3's ``check_env`` and dm_control's tests).

fleetrl's env conventions: ``observation_space`` is a ``Dict`` of ``Box`` es (an optional ``image`` key is uint8
``(H, W, 3)``); ``action_space`` is ``Box(-1, 1, (A,), float32)``; ``reset(seed=...)`` returns ``(obs, info)`` with
``info["success"] is False``; ``step`` returns ``(obs, reward, terminated, truncated, info)`` with a bool
``info["success"]``; ``render()`` in ``rgb_array`` mode returns a uint8 ``(H, W, 3)`` frame.

:func:`check_env` exercises an env built by a factory and raises :class:`EnvContractError` naming the env and the
exact fault (key, step, seed); :func:`check_registered` does the same for a registered gymnasium id.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import time
from collections.abc import Callable, Sequence
from typing import Any

import gymnasium as gym
import numpy as np

__all__ = ["CheckReport", "EnvContractError", "check_env", "check_registered"]

#: Longest declared horizon that the episode-end check will run out; longer ones are skipped with a note.
MAX_HORIZON_CHECKED = 10_000

Obs = dict[str, np.ndarray]


class EnvContractError(AssertionError):
    """An env broke fleetrl's env contract; the message names the env and the fault."""


@dataclasses.dataclass
class CheckReport:
    """What :func:`check_env` ran: the env's name (spec id, else class name), env steps taken over all the
    instances it built, notes (skipped checks), and wall time in seconds."""

    env_id: str
    steps: int
    notes: list[str]
    seconds: float


def _env_name(env: Any) -> str:
    spec = getattr(env, "spec", None)
    if spec is not None and getattr(spec, "id", None):
        return str(spec.id)
    return type(getattr(env, "unwrapped", env)).__name__


def _describe_action(action: np.ndarray) -> str:
    if np.all(action == -1.0):
        return "all -1"
    if np.all(action == 1.0):
        return "all +1"
    return "random"


class _Checker:
    """One env instance under check: wraps reset/step so every output is validated and every fault is named."""

    def __init__(self, env: gym.Env, name: str):
        self.env = env
        self.name = name
        self.steps = 0

    def fail(self, msg: str) -> EnvContractError:
        return EnvContractError(f"{self.name}: {msg}")

    # -- spaces -------------------------------------------------------------------------------------------------

    def check_spaces(self) -> None:
        obs_space, act_space = self.env.observation_space, self.env.action_space
        if not isinstance(obs_space, gym.spaces.Dict):
            raise self.fail(f"observation_space must be a gymnasium.spaces.Dict, got {type(obs_space).__name__}")
        for key, sub in obs_space.spaces.items():
            if not isinstance(sub, gym.spaces.Box):
                raise self.fail(f"observation_space[{key!r}] must be a Box, got {type(sub).__name__}")
        image = obs_space.spaces.get("image")
        if image is not None and (image.dtype != np.uint8 or len(image.shape) != 3 or image.shape[2] != 3):
            raise self.fail(f"observation_space['image'] must be uint8 (H, W, 3), got {image.dtype} {image.shape}")
        if not isinstance(act_space, gym.spaces.Box):
            raise self.fail(f"action_space must be a Box, got {type(act_space).__name__}")
        if act_space.dtype != np.float32 or len(act_space.shape) != 1:
            raise self.fail(f"action_space must be float32 of shape (A,), got {act_space.dtype} {act_space.shape}")
        if not (np.all(act_space.low == -1.0) and np.all(act_space.high == 1.0)):
            raise self.fail(f"action_space bounds must be -1..1, got low={act_space.low} high={act_space.high}")

    # -- outputs ------------------------------------------------------------------------------------------------

    def check_obs(self, obs: Any, where: str) -> Obs:
        space: gym.spaces.Dict = self.env.observation_space  # type: ignore[assignment]
        if not isinstance(obs, dict):
            raise self.fail(f"{where}: obs must be a dict, got {type(obs).__name__}")
        missing, extra = sorted(set(space.spaces) - set(obs)), sorted(set(obs) - set(space.spaces))
        if missing or extra:
            raise self.fail(f"{where}: obs keys differ from observation_space: missing key(s) {missing}, "
                            f"extra key(s) {extra}")
        for key, sub in space.spaces.items():
            x = obs[key]
            if not isinstance(x, np.ndarray):
                raise self.fail(f"{where}: obs[{key!r}] must be an np.ndarray, got {type(x).__name__}")
            if x.shape != sub.shape:
                raise self.fail(f"{where}: obs[{key!r}] has shape {x.shape}, expected {sub.shape}")
            if x.dtype != sub.dtype:
                raise self.fail(f"{where}: obs[{key!r}] has dtype {x.dtype}, expected {sub.dtype}")
            # Non-finite values are reported before the bounds so that a NaN is named as a NaN, not "out of bounds".
            if np.issubdtype(x.dtype, np.inexact) and not np.all(np.isfinite(x)):
                bad = np.argwhere(~np.isfinite(x))[0]
                raise self.fail(f"{where}: obs[{key!r}] has non-finite values (NaN/inf), first at index "
                                f"{tuple(int(i) for i in bad)}: {x[tuple(bad)]}")
            if not sub.contains(x):
                outside = (x < sub.low) | (x > sub.high)
                idx = tuple(int(i) for i in np.argwhere(outside)[0]) if outside.any() else ()
                detail = (f", first at index {idx}: {x[idx]} not in [{sub.low[idx]}, {sub.high[idx]}]"
                          if idx else "")
                raise self.fail(f"{where}: obs[{key!r}] is outside observation_space[{key!r}] bounds{detail}")
        if "image" in obs:
            img = obs["image"]
            if img.size and np.all(img == img.reshape(-1, 3)[0]):
                raise self.fail(f"{where}: obs['image'] is constant (every pixel {img.reshape(-1, 3)[0]})")
        return obs

    def _check_success(self, info: Any, where: str) -> bool:
        if not isinstance(info, dict):
            raise self.fail(f"{where}: info must be a dict, got {type(info).__name__}")
        if "success" not in info:
            raise self.fail(f"{where}: info has no 'success' key (keys: {sorted(info)})")
        success = info["success"]
        if not isinstance(success, (bool, np.bool_)):
            raise self.fail(f"{where}: info['success'] must be a bool, got {type(success).__name__} {success!r}")
        return bool(success)

    def reset(self, seed: int | None, where: str | None = None) -> Obs:
        where = where or f"reset(seed={seed})"
        try:
            out = self.env.reset(seed=seed)
        except Exception as exc:
            raise self.fail(f"{where} raised {type(exc).__name__}: {exc}") from exc
        if not (isinstance(out, tuple) and len(out) == 2):
            raise self.fail(f"{where} must return (obs, info), got {type(out).__name__}")
        obs, info = out
        self.check_obs(obs, where)
        if self._check_success(info, where):
            raise self.fail(f"{where}: info['success'] must be False on reset")
        return obs

    def step(self, action: np.ndarray, where: str) -> tuple[Obs, float, bool, bool, bool]:
        where = f"{where} (action {_describe_action(action)})"
        sent = action.copy()
        try:
            out = self.env.step(action)
        except Exception as exc:
            raise self.fail(f"{where} raised {type(exc).__name__}: {exc}") from exc
        self.steps += 1
        if not np.array_equal(action, sent):
            raise self.fail(f"{where}: step() modified the action array passed to it")
        if not (isinstance(out, tuple) and len(out) == 5):
            raise self.fail(f"{where} must return (obs, reward, terminated, truncated, info), got {type(out).__name__}")
        obs, reward, terminated, truncated, info = out
        self.check_obs(obs, where)
        # Python ints are accepted too: they convert to float exactly.
        if isinstance(reward, (bool, np.bool_)) or not isinstance(reward, (float, int, np.floating, np.integer)):
            raise self.fail(f"{where}: reward must be a float or numpy scalar, got {type(reward).__name__} "
                            f"{reward!r}")
        if not np.isfinite(float(reward)):
            raise self.fail(f"{where}: reward is not finite: {reward}")
        for field, flag in (("terminated", terminated), ("truncated", truncated)):
            if not isinstance(flag, (bool, np.bool_)):
                raise self.fail(f"{where}: {field} must be a bool, got {type(flag).__name__} {flag!r}")
        success = self._check_success(info, where)
        return obs, float(reward), bool(terminated), bool(truncated), success


def _snapshot(obs: Obs) -> Obs:
    return {k: np.array(v, copy=True) for k, v in obs.items()}


def _first_diff(a: Obs, b: Obs) -> str | None:
    for key in a:
        if not np.array_equal(a[key], b[key]):
            return key
    return None


class _Retained:
    """Every obs handed out in one rollout, with a private copy, to detect arrays the env later writes into."""

    def __init__(self, checker: _Checker):
        self.checker = checker
        self.held: list[tuple[str, Obs, Obs]] = []

    def add(self, label: str, obs: Obs) -> None:
        if self.held:
            prev_label, prev, _ = self.held[-1]
            for key in obs:
                if obs[key] is prev[key] or np.shares_memory(obs[key], prev[key]):
                    raise self.checker.fail(f"obs[{key!r}] returned by {label} shares memory with the one returned "
                                            f"by {prev_label} (the env hands out an internal buffer; return a copy)")
        self.held.append((label, obs, _snapshot(obs)))

    def verify(self, after: str) -> None:
        for label, obs, copy_ in self.held:
            key = _first_diff(obs, copy_)
            if key is not None:
                raise self.checker.fail(f"obs[{key!r}] returned by {label} was modified later, by {after} "
                                        f"(the env writes into arrays it already returned; return a copy)")


def _accepts_render_mode(make: Callable[..., gym.Env]) -> bool | None:
    """Whether ``make`` takes a ``render_mode`` keyword (None: its signature cannot be inspected)."""
    try:
        params = inspect.signature(make).parameters.values()
    except (TypeError, ValueError):
        return None
    return any(p.kind is p.VAR_KEYWORD or (p.name == "render_mode" and p.kind is not p.POSITIONAL_ONLY)
               for p in params)


def _check_frame(checker: _Checker, frame: Any, where: str) -> None:
    if not isinstance(frame, np.ndarray):
        raise checker.fail(f"{where}: render() must return an np.ndarray, got {type(frame).__name__}")
    if frame.dtype != np.uint8:
        raise checker.fail(f"{where}: render() frame has dtype {frame.dtype}, expected uint8")
    if frame.ndim != 3 or frame.shape[2] != 3 or frame.shape[0] == 0 or frame.shape[1] == 0:
        raise checker.fail(f"{where}: render() frame has shape {frame.shape}, expected (H, W, 3)")
    if np.all(frame == frame[0, 0]):
        raise checker.fail(f"{where}: render() frame is constant (every pixel {frame[0, 0]})")


def check_env(make: Callable[..., gym.Env], *, steps: int = 30, seeds: Sequence[int] = (0, 1, 2),
              check_render: bool = True) -> CheckReport:
    """Check the env built by ``make()`` against fleetrl's env contract; raise :class:`EnvContractError` if broken.

    Checks, in order: spaces; every reset/step output (obs keys, shape, dtype, bounds, finiteness; reward,
    terminated, truncated, ``info["success"]``); determinism of two instances under one seed and action sequence;
    reset restoring state; no aliasing of returned arrays; the extreme actions -1 and +1; initial observations
    that vary with the seed (unless ``metadata["deterministic_reset"]``); truncation by the declared horizon
    (``spec.max_episode_steps`` or ``metadata["max_episode_steps"]``) and ``reset()`` afterwards; and, with
    ``check_render``, an ``rgb_array`` frame from ``make(render_mode="rgb_array")``.
    """
    if not seeds:
        raise ValueError("check_env needs at least one seed")
    start = time.perf_counter()
    notes: list[str] = []
    created: list[gym.Env] = []
    checkers: list[_Checker] = []
    try:
        created.append(make())
        a = _Checker(created[0], _env_name(created[0]))
        checkers.append(a)
        a.check_spaces()
        created.append(make())
        b = _Checker(created[1], a.name)
        checkers.append(b)
        if b.env.observation_space != a.env.observation_space or b.env.action_space != a.env.action_space:
            raise a.fail("two instances from the same factory have different spaces")

        seed = seeds[0]
        # A private, seeded copy of the action space: the action sequence is reproducible and the env's own
        # action_space RNG is left untouched.
        sampler = copy.deepcopy(a.env.action_space)
        sampler.seed(seed)
        actions = [np.asarray(sampler.sample(), dtype=np.float32) for _ in range(steps)]

        # Two instances, same seed, same actions: identical trajectories; returned arrays never aliased.
        obs_a, obs_b = a.reset(seed, f"instance 1 reset(seed={seed})"), b.reset(seed, f"instance 2 reset(seed={seed})")
        key = _first_diff(obs_a, obs_b)
        if key is not None:
            raise a.fail(f"two instances reset(seed={seed}) give different initial obs[{key!r}] "
                         f"(reset must draw all randomness from the seeded self.np_random)")
        initial = _snapshot(obs_a)
        retained = _Retained(a)
        retained.add(f"reset(seed={seed})", obs_a)
        trajectory: list[tuple[Obs, float, bool, bool, bool]] = []
        for t, action in enumerate(actions):
            where = f"step {t} after reset(seed={seed})"
            out_a, out_b = a.step(action.copy(), f"instance 1 {where}"), b.step(action.copy(), f"instance 2 {where}")
            retained.add(f"step {t}", out_a[0])
            retained.verify(f"step {t}")
            key = _first_diff(out_a[0], out_b[0])
            if key is not None:
                raise a.fail(f"{where}: two instances with the same seed and actions give different obs[{key!r}]")
            for i, field in enumerate(("reward", "terminated", "truncated", "info['success']"), start=1):
                if out_a[i] != out_b[i]:
                    raise a.fail(f"{where}: two instances with the same seed and actions give different {field} "
                                 f"({out_a[i]} vs {out_b[i]})")
            trajectory.append((_snapshot(out_a[0]), *out_a[1:]))
            if out_a[2] or out_a[3]:
                break

        # Same instance, reset with the same seed again: same start and same trajectory (reset restores all state).
        obs_again = a.reset(seed, f"second reset(seed={seed}) of the same instance")
        retained.verify(f"the second reset(seed={seed})")
        retained.add(f"the second reset(seed={seed})", obs_again)
        key = _first_diff(obs_again, initial)
        if key is not None:
            raise a.fail(f"reset(seed={seed}) twice on the same instance gives different initial obs[{key!r}] "
                         f"(reset does not fully restore the state)")
        for t, (obs_t, reward, terminated, truncated, success) in enumerate(trajectory):
            out = a.step(actions[t].copy(), f"step {t} after the second reset(seed={seed})")
            key = _first_diff(out[0], obs_t)
            replay = {"reward": reward, "terminated": terminated, "truncated": truncated, "info['success']": success}
            diff = [f for i, f in enumerate(replay, start=1) if out[i] != replay[f]]
            if key is not None or diff:
                raise a.fail(f"step {t} after a second reset(seed={seed}) of the same instance differs from the first "
                             f"episode in {f'obs[{key!r}]' if key is not None else diff[0]} "
                             f"(reset does not fully restore the state)")

        # The corners of the action box, held for a whole rollout: accepted and the obs stays finite and in bounds.
        for corner in (-1.0, 1.0):
            a.reset(seed)
            action = np.full(a.env.action_space.shape, corner, dtype=np.float32)
            for t in range(steps):
                _, _, terminated, truncated, _ = a.step(action.copy(), f"step {t} after reset(seed={seed})")
                if terminated or truncated:
                    break

        # Different seeds: the initial observations are not all identical; each seed agrees across instances.
        starts = []
        for s in seeds:
            obs_s = a.reset(s)
            key = _first_diff(obs_s, b.reset(s, f"instance 2 reset(seed={s})"))
            if key is not None:
                raise a.fail(f"two instances reset(seed={s}) give different initial obs[{key!r}]")
            starts.append(_snapshot(obs_s))
        if a.env.metadata.get("deterministic_reset", False):
            notes.append("randomised-reset check skipped: metadata['deterministic_reset'] is True")
        elif len(seeds) < 2:
            notes.append("randomised-reset check skipped: only one seed given")
        elif all(_first_diff(starts[0], other) is None for other in starts[1:]):
            raise a.fail(f"reset with seeds {tuple(seeds)} gives the same initial obs every time (reset is not "
                         f"randomised; set metadata['deterministic_reset'] = True if that is intended)")

        # Episode end: the declared horizon is honoured, and reset() (no seed) works after the end.
        spec = getattr(a.env, "spec", None)
        horizon = getattr(spec, "max_episode_steps", None) or a.env.metadata.get("max_episode_steps")
        if horizon is None:
            notes.append("horizon check skipped: no spec.max_episode_steps or metadata['max_episode_steps']")
        elif not 0 < horizon <= MAX_HORIZON_CHECKED:
            notes.append(f"horizon check skipped: max_episode_steps={horizon} is not in 1..{MAX_HORIZON_CHECKED}")
        else:
            a.reset(seed)
            for t in range(horizon):
                _, _, terminated, truncated, _ = a.step(np.asarray(sampler.sample(), np.float32),
                                                        f"step {t} of the horizon run after reset(seed={seed})")
                if terminated or truncated:
                    break
            else:
                raise a.fail(f"the episode after reset(seed={seed}) neither terminated nor truncated within its "
                             f"declared horizon max_episode_steps={horizon}")
            a.reset(None, f"reset() after the episode ended at step {t}")

        if check_render:
            accepts = _accepts_render_mode(make)
            r_env: gym.Env | None = None
            if accepts is None:
                # Uninspectable factory: calling it is the only way to find out.
                try:
                    r_env = make(render_mode="rgb_array")
                except TypeError:
                    r_env = None
            elif accepts:
                r_env = make(render_mode="rgb_array")
            if r_env is not None:
                created.append(r_env)
            elif getattr(a.env, "render_mode", None) == "rgb_array":
                r_env = a.env
            if r_env is None:
                notes.append("render check skipped: the factory takes no render_mode and its env's render_mode "
                             "is not 'rgb_array'")
            else:
                r = _Checker(r_env, a.name)
                checkers.append(r)
                r.reset(seed, f"render env reset(seed={seed})")
                r.step(np.zeros(r_env.action_space.shape, np.float32), f"render env step 0 after reset(seed={seed})")
                try:
                    frame = r_env.render()
                except Exception as exc:
                    raise r.fail(f"render() after one step raised {type(exc).__name__}: {exc}") from exc
                _check_frame(r, frame, "render env after one step")
        else:
            notes.append("render check skipped: check_render=False")
        return CheckReport(env_id=a.name, steps=sum(c.steps for c in checkers), notes=notes,
                           seconds=time.perf_counter() - start)
    finally:
        for env in created:
            env.close()


def check_registered(env_id: str, *, steps: int = 30, seeds: Sequence[int] = (0, 1, 2), check_render: bool = True,
                     **make_kwargs: Any) -> CheckReport:
    """:func:`check_env` on ``gymnasium.make(env_id, **make_kwargs)`` (the render check passes ``render_mode``)."""

    def make(render_mode: str | None = None) -> gym.Env:
        kwargs = dict(make_kwargs)
        if render_mode is not None:
            kwargs["render_mode"] = render_mode
        return gym.make(env_id, **kwargs)

    return check_env(make, steps=steps, seeds=seeds, check_render=check_render)
