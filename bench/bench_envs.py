"""Env steps/s per core of the five simulated WidowX tasks, against each task's physics bound.

One process pinned to one core (the least busy one unless ``--core``), BLAS/OpenMP threads 1. For each task
(``fleetrl/WidowX{Reach,Lift,PutOnPlate,Push,Stack}-v0``), variants interleaved repeat by repeat, each run for a
fixed time (``--seconds``; the breakdown over a fixed number of steps, see below):

- ``physics bound``: raw ``mujoco.mj_step(model, data, nstep=100)`` (one env step's 100 substeps of 2 ms) on the
  task's own model, from states recorded along scripted-expert episodes (the arm servoing to the expert's targets,
  objects on the table, grasped, carried, pushed): ``mj_setState`` to a recorded state (untimed), then the 100
  timed substeps. Physics steps/s; the bound in env steps/s is that / 100.
- ``state, expert``: ``gym.make(id)`` (default observation: state, joints, object), ``env.step`` driven by
  ``ScriptedExpert(task, noise=0.3)``; finished episodes are reset inside the timed loop, as an actor does. The
  expert's own ``act`` time is measured and left out (an actor runs its policy there instead).
- ``state, random``: the same with uniform random actions (pre-drawn), so episodes run to the time limit.
- ``image 128, expert``: ``gym.make(id, image=True, image_size=128)`` (offscreen rendering per ``MUJOCO_GL``),
  expert-driven as above.
- ``breakdown``: two more state-only envs in lockstep (same seeds, same actions, so the same states step by step),
  for expert and random actions, over exactly the steps the ``state, ...`` window of the same repeat took (same
  seed, same step count, so the same episodes): one takes whole ``env.step`` / ``env.reset`` calls (the
  "lockstep" total; it should match the loop's own rate), the other has the pieces of ``WidowXEnv.step`` called
  directly, each timed with ``time.perf_counter``: control (``sim.controller.apply``: the target pose update and
  the damped least squares IK, ``BridgeController.solve_ik``), physics (``mj_step``, 100 substeps), task
  (``task.success``, the sparse reward), observation (``env._obs()``), reset (amortised per step). "other" = the
  whole step minus these pieces: gymnasium's wrappers, the action check, the info dict. The IK's cost per
  iteration is timed on its own (a target out of reach runs all iterations), giving the mean iterations per step.

Within one repeat every env variant starts its window with ``env.reset(seed=s)`` and its actions restarted from
``s`` (untimed), so all of them run through the same episodes (a slower variant covers a shorter prefix); repeats
use different seeds. Each measurement also records the share of its wall time the process was on its CPU.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[_var] = "1"
os.environ.setdefault("MUJOCO_GL", "egl")

import argparse  # noqa: E402
import pathlib  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from typing import Any  # noqa: E402

import gymnasium as gym  # noqa: E402
import mujoco  # noqa: E402
import numpy as np  # noqa: E402
from _common import loadavg, parse_args, print_table, save, summary  # noqa: E402

from fleetrl.envs.registry import WIDOWX_IDS, register_envs  # noqa: E402
from fleetrl.envs.widowx.arm import tcp_pose  # noqa: E402
from fleetrl.envs.widowx.control import BridgeController, euler_to_mat  # noqa: E402
from fleetrl.envs.widowx.experts import ScriptedExpert  # noqa: E402
from fleetrl.envs.widowx.sim import SUBSTEPS  # noqa: E402

EXPERT_NOISE = 0.3
IMAGE_SIZE = 128
MAX_RECORDED_STATES = 3000
STATE_SPEC = mujoco.mjtState.mjSTATE_INTEGRATION
PIECES = ("control_ik", "physics", "task", "obs", "reset")


# --- the core ---------------------------------------------------------------------------------------------------
def _core_ticks() -> dict[int, tuple[int, int]]:
    """Per core: (busy ticks, total ticks) from /proc/stat."""
    out = {}
    for line in pathlib.Path("/proc/stat").read_text().splitlines():
        name, *fields = line.split()
        if name.startswith("cpu") and name[3:].isdigit():
            f = [int(x) for x in fields[:8]]
            out[int(name[3:])] = (sum(f) - f[3] - f[4], sum(f))
    return out


def core_busy(seconds: float = 1.0) -> dict[int, float]:
    """Fraction of each core busy over ``seconds``."""
    a = _core_ticks()
    time.sleep(seconds)
    b = _core_ticks()
    return {c: round((b[c][0] - a[c][0]) / max(b[c][1] - a[c][1], 1), 2) for c in a if c in b}


# --- the measured loops -----------------------------------------------------------------------------------------
class Actions:
    """The scripted expert or pre-drawn uniform random actions; restarted from a seed at each window."""

    def __init__(self, task: str, kind: str):
        self.kind = kind
        self.expert = ScriptedExpert(task, noise=EXPERT_NOISE, seed=0)
        self.random = np.zeros((4096, 7), np.float32)
        self.i = 0

    def restart(self, seed: int) -> None:
        self.expert.reset(seed=seed)
        self.random = np.random.default_rng(seed).uniform(-1.0, 1.0, self.random.shape).astype(np.float32)
        self.i = 0

    def __call__(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        if self.kind == "expert":
            return self.expert.act(obs)
        self.i += 1
        return self.random[(self.i - 1) % len(self.random)]

    def episode_end(self) -> None:
        self.expert.reset()


class EnvRunner:
    """``env.step`` in a loop for a fixed time, resetting finished episodes inside the loop (as an actor does).

    Each window starts with ``env.reset(seed=seed)`` and the action source restarted from ``seed`` (untimed), so
    every variant of one repeat runs through the same episodes."""

    def __init__(self, env: gym.Env, task: str, actions: str):
        self.env, self.act = env, Actions(task, actions)
        self.steps = self.episodes = self.successes = self.finished_steps = self.last_steps = 0
        self.act_s = 0.0

    def run(self, seconds: float, seed: int) -> float:
        """Env steps per second of env time (the expert's ``act`` time left out)."""
        env, act, pc = self.env, self.act, time.perf_counter
        obs, _ = env.reset(seed=seed)
        act.restart(seed)
        n = ep_start = 0
        act_s = 0.0
        t0 = pc()
        deadline = t0 + seconds
        while True:
            a0 = pc()
            action = act(obs)
            act_s += pc() - a0
            obs, _, terminated, truncated, info = env.step(action)
            n += 1
            if terminated or truncated:
                self.episodes += 1
                self.finished_steps += n - ep_start
                ep_start = n
                self.successes += bool(info["success"])
                obs, _ = env.reset()
                act.episode_end()
            now = pc()
            if now >= deadline:
                break
        self.steps += n
        self.last_steps = n
        self.act_s += act_s
        return n / (now - t0 - act_s)


class PartsRunner:
    """Two envs in lockstep on the same seeds and actions (so in the same states, step by step): ``full`` takes
    whole ``env.step`` / ``env.reset`` calls, ``parts`` has the pieces of ``WidowXEnv.step`` called directly, each
    timed. The difference per step is the glue (wrappers, action check, info dict). ``parts`` also records the
    physics states the bound replays."""

    def __init__(self, full: gym.Env, parts: gym.Env, task: str, actions: str):
        self.full, self.parts, self.u, self.act = full, parts, parts.unwrapped, Actions(task, actions)
        self.states: list[np.ndarray] = []
        self.recording = False
        self.diverged_steps = 0

    def run(self, steps: int, seed: int) -> dict[str, float]:
        """Microseconds per step of the full step (reset amortised) and of each piece, over ``steps`` steps from
        ``seed`` (the same steps as an :class:`EnvRunner` window with that seed and as many steps)."""
        full, parts, u, act = self.full, self.parts, self.u, self.act
        sim, task = u.sim, u.task
        model, data, controller = sim.model, sim.data, sim.controller
        pc = time.perf_counter
        obs, _ = full.reset(seed=seed)
        parts.reset(seed=seed)
        act.restart(seed)
        acc = dict.fromkeys(("full_step", *PIECES), 0.0)
        n = 0
        while n < steps:
            action = act(obs)
            f0 = pc()
            obs, _, terminated, truncated, _ = full.step(action)
            acc["full_step"] += pc() - f0
            a = np.asarray(action, dtype=np.float64)
            t0 = pc()
            controller.apply(data, a)
            t1 = pc()
            if self.recording and len(self.states) < MAX_RECORDED_STATES:
                state = np.empty(mujoco.mj_stateSize(model, STATE_SPEC))
                mujoco.mj_getState(model, data, state, STATE_SPEC)
                self.states.append(state)
            t2 = pc()
            mujoco.mj_step(model, data, nstep=SUBSTEPS)
            t3 = pc()
            success = task.success(sim)
            _reward = 1.0 if success else 0.0
            t4 = pc()
            parts_obs = u._obs()
            t5 = pc()
            acc["control_ik"] += t1 - t0
            acc["physics"] += t3 - t2
            acc["task"] += t4 - t3
            acc["obs"] += t5 - t4
            n += 1
            if not np.array_equal(parts_obs["state"], obs["state"]):
                self.diverged_steps += 1
            if terminated or truncated:
                f0 = pc()
                obs, _ = full.reset()
                acc["full_step"] += pc() - f0
                r0 = pc()
                parts.reset()
                acc["reset"] += pc() - r0
                act.episode_end()
        out = {k: 1e6 * v / max(n, 1) for k, v in acc.items()}
        out["other"] = out["full_step"] - sum(out[k] for k in PIECES)
        out["steps"] = n
        return out


def physics_rate(model: mujoco.MjModel, states: list[np.ndarray], seconds: float) -> float:
    """Physics steps/s of ``mj_step(nstep=SUBSTEPS)`` from the recorded states, in turn (only mj_step timed)."""
    data = mujoco.MjData(model)
    pc = time.perf_counter
    physics_s, n, i = 0.0, 0, 0
    deadline = pc() + seconds
    while pc() < deadline:
        mujoco.mj_setState(model, data, states[i], STATE_SPEC)
        i = (i + 1) % len(states)
        t0 = pc()
        mujoco.mj_step(model, data, nstep=SUBSTEPS)
        physics_s += pc() - t0
        n += SUBSTEPS
    return n / physics_s


def gl_renderer() -> str | None:
    """The OpenGL renderer of the current context (the image env's, after it rendered), e.g. llvmpipe."""
    try:
        from OpenGL import GL

        return " / ".join(GL.glGetString(k).decode() for k in (GL.GL_RENDERER, GL.GL_VERSION))
    except Exception:  # noqa: BLE001 - a diagnostic string only
        return None


def ik_us_per_iteration(controller: BridgeController, q0: np.ndarray, calls: int = 60) -> float:
    """Microseconds per iteration of ``solve_ik``: solves towards targets 0-5 cm and 0-0.25 rad from the pose of
    ``q0`` (what one action asks for), divided by the iterations the solver reports (``last_iterations``)."""
    pos0, rot0 = tcp_pose(controller.model, q0)
    rng = np.random.default_rng(0)
    iterations, t0 = 0, time.perf_counter()
    for _ in range(calls):
        pos = pos0 + rng.uniform(-0.05, 0.05, 3)
        rot = euler_to_mat(rng.uniform(-0.25, 0.25, 3)) @ rot0
        controller.solve_ik(q0, pos, rot)
        iterations += controller.last_iterations
    return 1e6 * (time.perf_counter() - t0) / iterations


def with_cpu_share(fn: Callable[..., Any], *args: Any) -> tuple[Any, float]:
    """``fn(*args)`` and the share of its wall time this process had a CPU (1: never preempted by other work)."""
    w0, c0 = time.perf_counter(), time.process_time()
    out = fn(*args)
    return out, (time.process_time() - c0) / (time.perf_counter() - w0)


# --- one task ---------------------------------------------------------------------------------------------------
def bench_task(task: str, seed: int, seconds: float, repeats: int) -> dict[str, Any]:
    """All variants of one task; repeat ``k`` runs every variant from seed ``seed + 1000 * (k + 1)``."""
    env_id = WIDOWX_IDS[task]
    envs = {name: gym.make(env_id) for name in ("expert", "random", "full e", "parts e", "full r", "parts r")}
    envs["image"] = gym.make(env_id, image=True, image_size=IMAGE_SIZE)
    try:
        runners = {
            "state, expert": EnvRunner(envs["expert"], task, "expert"),
            "state, random": EnvRunner(envs["random"], task, "random"),
            "image 128, expert": EnvRunner(envs["image"], task, "expert"),
        }
        splits = {"expert": PartsRunner(envs["full e"], envs["parts e"], task, "expert"),
                  "random": PartsRunner(envs["full r"], envs["parts r"], task, "random")}
        sim = envs["parts e"].unwrapped.sim
        model = sim.model
        # Warm-up (first calls, the renderer's context); the expert breakdown records the states the bound replays.
        splits["expert"].recording = True
        splits["expert"].run(max(100, int(100 * seconds)), seed)
        splits["expert"].recording = False
        states = splits["expert"].states
        splits["random"].run(100, seed)
        for r in runners.values():
            r.run(min(seconds, 1.0), seed)
        for r in runners.values():  # episode statistics of the timed windows only
            r.steps = r.episodes = r.successes = r.finished_steps = 0
            r.act_s = 0.0
        physics_rate(model, states, min(seconds, 0.5))
        gl = gl_renderer()

        values: dict[str, list[float]] = {"physics bound": [], **{name: [] for name in runners}}
        shares: dict[str, list[float]] = {**{name: [] for name in values}, **{f"breakdown {k}": [] for k in splits}}
        pieces: dict[str, list[dict[str, float]]] = {k: [] for k in splits}
        ik_iter_us: list[float] = []
        for k in range(repeats):
            window_seed = seed + 1000 * (k + 1)
            rate, share = with_cpu_share(physics_rate, model, states, seconds)
            values["physics bound"].append(rate)
            shares["physics bound"].append(share)
            for name, r in runners.items():
                rate, share = with_cpu_share(r.run, seconds, window_seed)
                values[name].append(rate)
                shares[name].append(share)
            for actions, split in splits.items():  # the same steps as this repeat's state-only window
                steps = runners[f"state, {actions}"].last_steps
                out, share = with_cpu_share(split.run, steps, window_seed)
                pieces[actions].append(out)
                shares[f"breakdown {actions}"].append(share)
            ik_iter_us.append(ik_us_per_iteration(sim.controller, sim.joints().astype(np.float64)))
        runs = {name: {"episodes_finished": r.episodes, "steps": r.steps,
                       "success_rate": r.successes / max(r.episodes, 1),
                       "mean_episode_length": r.finished_steps / max(r.episodes, 1),
                       "action_us_per_step": 1e6 * r.act_s / max(r.steps, 1)}
                for name, r in runners.items()}
        return {"env_id": env_id, "values": values, "cpu_share": shares, "pieces": pieces, "runs": runs,
                "ik_us_per_iteration": ik_iter_us, "recorded_states": len(states),
                "lockstep_diverged_steps": {k: split.diverged_steps for k, split in splits.items()},
                "physics_timestep_s": float(model.opt.timestep), "gl": gl}
    finally:
        for env in envs.values():
            env.close()


def analyse(raw: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Summaries (result) and ratios against the bound for one task."""
    values = raw["values"]
    med = {k: statistics.median(v) for k, v in values.items()}
    bound_env = med["physics bound"] / SUBSTEPS
    keys = ("full_step", *PIECES, "other")
    piece_med = {actions: {k: statistics.median(p[k] for p in reps) for k in keys}
                 for actions, reps in raw["pieces"].items()}
    ik_iter = statistics.median(raw["ik_us_per_iteration"])
    for b in piece_med.values():
        b["ik_iterations_per_step_approx"] = b["control_ik"] / ik_iter
    step_us = 1e6 / med["state, expert"]
    result = {
        "env_id": raw["env_id"],
        "physics_steps_per_s": summary(values["physics bound"]),
        "bound_env_steps_per_s": bound_env,
        "env_steps_per_s": {k: summary(v) for k, v in values.items() if k != "physics bound"},
        "runs": raw["runs"],
        # Share of each measurement's wall time this process was on its CPU (below ~0.95: disturbed by other work).
        "cpu_share": raw["cpu_share"],
        "breakdown_us_per_step": piece_med,
        "breakdown_repeats": raw["pieces"],
        "ik_us_per_iteration": summary(raw["ik_us_per_iteration"]),
        "recorded_states": raw["recorded_states"],
        "lockstep_diverged_steps": raw["lockstep_diverged_steps"],
    }
    # Paired: per repeat, the variant over that repeat's bound.
    paired = {k: statistics.median(v / (b / SUBSTEPS) for v, b in zip(values[k], values["physics bound"], strict=True))
              for k in values if k != "physics bound"}
    ratios = {f"{k} / bound": med[k] / bound_env for k in values if k != "physics bound"}
    ratios |= {f"{k} / bound (paired)": v for k, v in paired.items()}
    ratios["state, expert meets 0.5x bound"] = med["state, expert"] / bound_env >= 0.5
    ratios["state, random meets 0.5x bound"] = med["state, random"] / bound_env >= 0.5
    ratios["render_us_per_step"] = 1e6 / med["image 128, expert"] - step_us
    return result, ratios


# --- main -------------------------------------------------------------------------------------------------------
def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="short runs (0.4 s each); all five tasks in under 2 minutes")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats per variant (>= 3; default 3)")
    parser.add_argument("--seconds", type=float, default=None, help="duration of each measurement (default 3)")
    parser.add_argument("--tasks", default=",".join(WIDOWX_IDS),
                        help=f"comma-separated subset of {','.join(WIDOWX_IDS)} (default: all)")
    parser.add_argument("--core", type=int, default=None, help="core to pin to (default: the least busy one)")
    ours = parser.parse_args()
    # The shared parser validates --quick/--repeats and takes the start snapshots (load average, CPU time).
    argv = sys.argv
    sys.argv = [argv[0], *(["--quick"] if ours.quick else []),
                *(["--repeats", str(ours.repeats)] if ours.repeats is not None else [])]
    try:
        parse_args(__doc__.splitlines()[0])
    finally:
        sys.argv = argv
    tasks = [t.strip() for t in ours.tasks.split(",") if t.strip()]
    unknown = [t for t in tasks if t not in WIDOWX_IDS]
    if unknown or not tasks:
        parser.error(f"--tasks: unknown {unknown}; known: {list(WIDOWX_IDS)}")
    ours.tasks = tasks
    ours.repeats = ours.repeats or 3
    ours.seconds = ours.seconds or (0.4 if ours.quick else 3.0)
    if ours.seconds <= 0:
        parser.error("--seconds must be > 0")
    return ours


def main() -> None:
    args = parse()
    register_envs()
    busy = core_busy()
    allowed = sorted(os.sched_getaffinity(0))
    core = args.core if args.core is not None else min(allowed, key=lambda c: busy.get(c, 1.0))
    if core not in allowed:
        raise SystemExit(f"--core {core}: not one of this process's cores {allowed}")
    os.sched_setaffinity(0, {core})
    print(f"load average {loadavg()}; per-core busy over 1 s {busy}; pinned to core {core}; "
          f"{args.seconds:g} s per measurement, {args.repeats} repeats; MUJOCO_GL={os.environ.get('MUJOCO_GL')}")

    results: dict[str, Any] = {}
    ratios: dict[str, Any] = {}
    for i, task in enumerate(args.tasks):
        t0 = time.perf_counter()
        raw = bench_task(task, seed=100 * (i + 1), seconds=args.seconds, repeats=args.repeats)
        results[task], ratios[task] = analyse(raw)
        print(f"  {task}: done in {time.perf_counter() - t0:.0f} s (load average {loadavg()})", flush=True)

    rows, brows = [], []
    for task, r in results.items():
        bound = r["bound_env_steps_per_s"]
        row: list[Any] = [task, r["physics_steps_per_s"]["median"], bound]
        for k in ("state, expert", "state, random", "image 128, expert"):
            s = r["env_steps_per_s"][k]
            row += [s["median"], f"{s['min']:.0f}-{s['max']:.0f}", s["median"] / bound]
        row += [r["runs"]["state, expert"]["mean_episode_length"], r["runs"]["state, expert"]["success_rate"],
                min(min(v) for v in r["cpu_share"].values())]
        rows.append(row)
        for actions, b in r["breakdown_us_per_step"].items():
            step = b["full_step"]
            brows.append([task, actions, 1e6 / r["env_steps_per_s"][f"state, {actions}"]["median"], step,
                          *(b[k] for k in (*PIECES, "other")), b["physics"] / step,
                          b["ik_iterations_per_step_approx"], r["ik_us_per_iteration"]["median"]])
    print_table(f"Env steps/s on one core (median of {args.repeats} x {args.seconds:g} s; x bound = / (physics "
                f"steps/s / {SUBSTEPS}))",
                ["task", "physics st/s", "bound", "state expert", "min-max", "x bound", "state random", "min-max",
                 "x bound", "image128 expert", "min-max", "x bound", "ep len", "success", "min cpu share"], rows)
    print_table("Where a state-only step goes (us per env step, medians; reset amortised per step). step: 1 / the "
                "env loop's rate; lockstep: env.step (+ reset) of the lockstep twin; other = lockstep - pieces; "
                "IK iters ~ control_ik / (us per IK iteration)",
                ["task", "actions", "step", "lockstep", *PIECES, "other", "physics share", "IK iters",
                 "us/IK iter"], brows)
    print("\nrendering 128x128 adds (us per step, 1 / image rate - 1 / state rate): "
          + ", ".join(f"{t} {r['render_us_per_step']:,.0f}" for t, r in ratios.items()))
    for task, r in ratios.items():
        for actions in ("expert", "random"):
            ratio = r[f"state, {actions} / bound"]
            b = results[task]["breakdown_us_per_step"][actions]
            worst = max((k for k in (*PIECES, "other") if k != "physics"), key=lambda k: b[k])
            verdict = "meets" if ratio >= 0.5 else "MISSES"
            print(f"{task}, {actions} actions: state-only {ratio:.2f}x the physics bound: {verdict} the 0.5x goal; "
                  f"largest non-physics piece: {worst} {b[worst]:.0f} us/step ({b[worst] / b['physics']:.2f}x "
                  f"physics)")

    save("bench_envs", args,
         params={"tasks": args.tasks, "seconds_per_measurement": args.seconds, "repeats": args.repeats,
                 "core": core, "per_core_busy_before": busy, "substeps_per_env_step": SUBSTEPS,
                 "physics_timestep_s": raw["physics_timestep_s"], "expert_noise": EXPERT_NOISE,
                 "image_size": IMAGE_SIZE, "MUJOCO_GL": os.environ.get("MUJOCO_GL"), "gl_renderer": raw["gl"],
                 "omp_mkl_openblas_threads": 1, "reward_type": "sparse (default)",
                 "bound_states": "mj_getState(mjSTATE_INTEGRATION) after controller.apply along expert episodes"},
         results=results, ratios=ratios,
         notes=["env steps/s of expert-driven variants leave out the expert's act time; resets are inside the loop",
                "bound = physics steps/s / substeps; physics replays recorded expert-episode states (only mj_step "
                "timed)",
                "breakdown: a lockstep twin takes whole env.step/reset calls on the same states; 'other' = that minus "
                "the timed pieces (wrappers, action check, info)",
                "ik_iterations_per_step_approx = control_ik us / (us per solve_ik iteration, timed on targets one "
                "action away and divided by the solver's own iteration count)",
                "cpu_share: process CPU time / wall time per measurement (< ~0.95: other work took this core)"])


if __name__ == "__main__":
    main()
