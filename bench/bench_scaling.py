"""Aggregate env steps/s against the number of sim actors, from real runs, with the ideal linear line.

Each point is one real run through ``fleetrl.distributed.launcher.train`` (replay server, weight store, learner and
N sim actors as Ray actors, one process each), stopped after its measuring window. The env is the WidowX reach task,
state only (``fleetrl/WidowXReach-v0``, 60-step episodes), the kind of robot simulation the fleet exists for: one
env step is 100 MuJoCo substeps (~2 ms), so each actor is CPU-bound in its simulator as a robot sim is, and the
per-step cost of fleetrl (policy, replay writing: ~0.2 ms) is a small part of it. (``--env pendulum``: the default
InvertedPendulum-v5, whose ~0.06 ms env step leaves fleetrl's per-step work and the replay server's inserts as the
main cost.)

The rate limiter is set loose so that actors never wait for the learner (``replay.updates_per_step=0.005``: the
learner takes one small update per 200 env steps and easily keeps up; ``rate_tolerance_steps=4000``), the learner is
small (SAC 64x64, batch 64, so it takes little of the cores the actors share) and actors act with their policy from
the first step (``actors.random_steps=0``).

Measurement: once every actor has stepped, ``--warmup`` seconds of warm-up (3 s), then a window of ``--window``
seconds (8 s; ``--quick``: 2 s and 6 s, N = 1, 2, one repeat). Each actor's rate is the change of its ``env_steps``
counter over the change of its own ``uptime_s`` between two ``stats()`` calls at the window's ends; the aggregate is
their sum. The CPU time of every process of the run (``Fleet.pids()``, from ``/proc``) and of the whole machine is
read at both ends too, so the table says how many cores the actors got and how busy the machine was.

Second baseline, what the machine itself gives: the same env and the same untrained policy (``build_policy`` of the
run's learner config, acting in numpy as in an actor) in N plain processes (``multiprocessing``; no Ray, no replay,
no learner; at Ray's worker niceness, 15), started together, ``--bare-window`` seconds (4 s) counted after 1 s. It
shows how far N processes of this simulator scale on this machine without the rest of fleetrl; fleet / plain is
what the fleet around the env loop costs.

The machine is shared: a run during which other processes used more than ``--max-other-cores`` (0.3) cores is
marked disturbed, and the medians are over the undisturbed runs (over all, if none is); every run is in the JSON.

Ray is started once (with ``launcher._init_ray``, i.e. exactly as ``train`` would for the largest N: embedded,
fresh, ``num_cpus = max(cores, N + 1)`` scheduling tokens, ``OMP_NUM_THREADS=1``) and shared by the runs; every run
starts and shuts down its own replay, learner and actors. Order within a repeat: plain 1, fleet 1, plain 2, fleet
2, ...; repeats one after another. Ideal line: N x the median 1-actor rate.

Options beside ``--quick``/``--repeats``: ``--env widowx-reach|pendulum``, ``--max-actors N`` (default: cores + 2),
``--warmup S``, ``--window S``, ``--bare-window S``, ``--max-other-cores C``. Writes
``bench/results/bench_scaling.json`` and ``docs/results/scaling_actors.png``.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import pathlib
import shutil
import statistics
import sys
import tempfile
import threading
import time
from typing import Any

import ray
from _common import parse_args, print_table, save, summary

from fleetrl.config import TrainConfig, config_to_dict, load_config
from fleetrl.distributed import launcher
from fleetrl.runs import new_run
from fleetrl.testing import wait_for

PLOT = pathlib.Path(__file__).resolve().parents[1] / "docs" / "results" / "scaling_actors.png"

#: Config overrides per env choice.
ENVS: dict[str, list[str]] = {
    "widowx-reach": ["env.id=fleetrl/WidowXReach-v0", "env.max_episode_steps=null", "env.success=info"],
    "pendulum": [],  # the defaults: InvertedPendulum-v5, 200-step limit
}
COMMON = [
    "total_env_steps=1000000000", "actors.random_steps=0",
    # Loose limiter: one small update per 200 env steps, so the learner keeps up with any number of actors and they
    # never wait for it (they would only block 4,000 steps ahead of it); the learner may run 20 updates ahead.
    "replay.min_size=256", "replay.updates_per_step=0.005", "replay.rate_tolerance_steps=4000",
    "learner.batch_size=64", "learner.sac.hidden_dims=[64, 64]", "learner.publish_every=10",
    "checkpoint.every_updates=1000000",  # no periodic checkpoint inside the window (one at shutdown)
    "logging.interval_s=2.0", "logging.live=false", "logging.wandb=false",
]
_TICK = os.sysconf("SC_CLK_TCK")


def _extra_args() -> tuple[argparse.Namespace, list[str]]:
    """This script's own options; the rest goes to ``_common.parse_args`` (``sys.argv`` is restored for ``save``)."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--env", choices=sorted(ENVS), default="widowx-reach")
    p.add_argument("--max-actors", type=int, default=None)
    p.add_argument("--warmup", type=float, default=None)
    p.add_argument("--window", type=float, default=None)
    p.add_argument("--bare-window", type=float, default=None)
    p.add_argument("--max-other-cores", type=float, default=0.3)
    ns, rest = p.parse_known_args()
    return ns, rest


def _proc_cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of process ``pid`` (None if it is gone)."""
    try:
        fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _TICK
    except (OSError, IndexError, ValueError):
        return None


def _machine_busy_s() -> float:
    fields = [int(x) for x in pathlib.Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / _TICK


def _snapshot(fleet: Any, pids: dict[str, int]) -> dict[str, Any]:
    actor_refs = {i: s.handle.stats.remote(drain=False) for i, s in fleet.actors.items()}
    learner_ref = fleet.learner.handle.stats.remote()
    replay_ref = fleet.replay.stats.remote()
    snap = {"t": time.monotonic(), "busy_s": _machine_busy_s(),
            "cpu_s": {name: _proc_cpu_s(pid) for name, pid in pids.items()},
            "driver_cpu_s": sum(os.times()[:2])}
    snap["actors"] = {i: ray.get(r, timeout=60) for i, r in actor_refs.items()}
    snap["learner"] = ray.get(learner_ref, timeout=60)
    snap["replay"] = ray.get(replay_ref, timeout=60)
    return snap


def one_run(cfg: TrainConfig, warmup_s: float, window_s: float) -> dict[str, Any]:
    """Start a run, measure the window, stop it; returns the per-actor rates and CPU shares."""
    plan = new_run(cfg)
    box: dict[str, Any] = {}
    started, stop = threading.Event(), threading.Event()

    def on_start(fleet: Any) -> None:
        box["fleet"] = fleet
        started.set()

    def target() -> None:
        try:
            box["summary"] = launcher.train(plan, stop=stop, on_start=on_start)
        except BaseException as exc:  # noqa: BLE001 - reported by the caller
            box["error"] = exc
            started.set()

    t_call = time.monotonic()
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    try:
        if not started.wait(300) or "error" in box:
            raise RuntimeError(f"run did not start: {box.get('error')!r}")
        fleet = box["fleet"]

        def all_stepping() -> bool:
            refs = [s.handle.stats.remote(drain=False) for s in fleet.actors.values()]
            return all(st["env_steps"] > 0 for st in ray.get(refs, timeout=120))

        wait_for(all_stepping, 300, "every actor stepping", interval_s=0.2)
        t_stepping = time.monotonic() - t_call
        time.sleep(warmup_s)
        pids = fleet.pids()
        a = _snapshot(fleet, pids)
        time.sleep(window_s)
        b = _snapshot(fleet, pids)
    finally:
        stop.set()
        thread.join(300)
    if "error" in box:
        raise RuntimeError(f"run failed: {box['error']!r}")
    wall = b["t"] - a["t"]
    rates, cores = [], []
    for i in sorted(a["actors"]):
        sa, sb = a["actors"][i], b["actors"][i]
        if sa["incarnation"] != sb["incarnation"]:
            raise RuntimeError(f"actor {i} restarted inside the window")
        rates.append((sb["env_steps"] - sa["env_steps"]) / (sb["uptime_s"] - sa["uptime_s"]))
        ca, cb = a["cpu_s"].get(f"actor {i}"), b["cpu_s"].get(f"actor {i}")
        cores.append(None if ca is None or cb is None else (cb - ca) / wall)

    def share(name: str) -> float | None:
        ca, cb = a["cpu_s"].get(name), b["cpu_s"].get(name)
        return None if ca is None or cb is None else round((cb - ca) / wall, 3)

    run_cores = sum((b["cpu_s"][k] or 0) - (a["cpu_s"][k] or 0) for k in a["cpu_s"]) / wall
    driver = (b["driver_cpu_s"] - a["driver_cpu_s"]) / wall
    busy = (b["busy_s"] - a["busy_s"]) / wall
    return {
        "actors": len(rates), "steps_per_s": sum(rates), "per_actor_steps_per_s": [round(r, 1) for r in rates],
        "actor_cores": [None if c is None else round(c, 3) for c in cores],
        "learner_cores": share("learner"), "replay_cores": share("replay"),
        "steps_per_actor_cpu_s": (sum(rates) / sum(cores)) if all(c for c in cores) else None,
        "learner_updates_per_s": (b["learner"]["learner_steps"] - a["learner"]["learner_steps"]) / wall,
        "replay_inserts_per_s": (b["replay"]["inserts"] - a["replay"]["inserts"]) / wall,
        "rate_limiter_at_end": [t["rate_limiter"] for t in b["replay"]["tables"]],
        "machine_busy_cores": round(busy, 3), "run_processes_cores": round(run_cores, 3),
        "driver_cores": round(driver, 3),
        # Cores busy with anything else: Ray's own daemons (GCS, raylet, ...) and other users of the machine.
        "other_cores": round(busy - run_cores - driver, 3),
        "start_until_all_stepping_s": round(t_stepping, 2), "window_s": round(wall, 2),
    }


def _bare_worker(cfg: dict[str, Any], seed: int, barrier: Any, warmup_s: float, window_s: float, out: Any) -> None:
    """One bare process: the env stepped with the run's own (untrained) policy, nothing else; reports steps/s, its
    CPU cores and the machine's busy cores over its window."""
    import torch

    from fleetrl.config import config_from_dict
    from fleetrl.envs.gym_adapter import make_env, transition_spec
    from fleetrl.learners.builder import build_policy

    os.nice(15)  # the niceness Ray gives its workers (the fleet's actors run at it too)
    torch.set_num_threads(1)
    c = config_from_dict(cfg)
    env = make_env(c.env)
    policy = build_policy(transition_spec(c.env), c.learner, seed=seed)
    obs, _ = env.reset(seed=seed)
    barrier.wait()
    t0 = time.monotonic()
    steps, c0, s0, cpu0, busy0 = 0, None, 0, 0.0, 0.0
    while True:
        obs, _, terminated, truncated, _ = env.step(policy.act(obs))
        steps += 1
        if terminated or truncated:
            obs, _ = env.reset()
        now = time.monotonic()
        if c0 is None and now - t0 >= warmup_s:
            c0, s0, cpu0, busy0 = now, steps, time.process_time(), _machine_busy_s()
        elif c0 is not None and now - c0 >= window_s:
            break
    wall = now - c0
    out.put(((steps - s0) / wall, (time.process_time() - cpu0) / wall, (_machine_busy_s() - busy0) / wall))


def bare_run(cfg: TrainConfig, n: int, window_s: float) -> dict[str, Any]:
    """The same env and policy in ``n`` plain processes at once, no Ray, replay or learner around them."""
    ctx = mp.get_context("spawn")
    barrier, out = ctx.Barrier(n), ctx.Queue()
    tree = config_to_dict(cfg)
    procs = [ctx.Process(target=_bare_worker, args=(tree, cfg.actors.seed + 1000 * i, barrier, 1.0, window_s, out),
                         daemon=True) for i in range(n)]
    for proc in procs:
        proc.start()
    got = [out.get(timeout=300) for _ in procs]
    for proc in procs:
        proc.join(30)
    rates, cores = [g[0] for g in got], [g[1] for g in got]
    busy = statistics.median(g[2] for g in got)
    return {"actors": n, "steps_per_s": sum(rates), "per_process_steps_per_s": [round(r, 1) for r in rates],
            "process_cores": [round(c, 3) for c in cores], "machine_busy_cores": round(busy, 3),
            "other_cores": round(busy - sum(cores), 3)}


def _summary(runs: list[dict[str, Any]], max_other: float) -> dict[str, Any]:
    """Median, min, max over the undisturbed runs (other processes below ``max_other`` cores), or over all runs if
    every one was disturbed; says which."""
    clean = [x["steps_per_s"] for x in runs if x["other_cores"] <= max_other]
    return {**summary(clean or [x["steps_per_s"] for x in runs]), "undisturbed_runs": len(clean),
            "all_runs": summary([x["steps_per_s"] for x in runs])}


def plot(ns: list[int], measured: dict[int, dict[str, Any]], bare: dict[int, dict[str, Any]],
         runs: dict[int, list[dict[str, Any]]], max_other: float, ideal: list[float], cores: int, env_id: str,
         path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    med = [measured[n]["median"] for n in ns]
    lo = [measured[n]["median"] - measured[n]["min"] for n in ns]
    hi = [measured[n]["max"] - measured[n]["median"] for n in ns]
    ax.plot(ns, ideal, "--", color="grey", label="ideal: N x 1-actor rate")
    bound = [min(n, cores) * measured[ns[0]]["median"] for n in ns]
    ax.plot(ns, bound, ":", color="tab:orange", label=f"core bound: min(N, {cores}) x 1-actor rate")
    ax.plot(ns, [bare[n]["median"] for n in ns], "s-", color="tab:green", alpha=0.7, ms=4,
            label="same env + policy in N plain processes (median)")
    ax.errorbar(ns, med, yerr=[lo, hi], fmt="o-", color="tab:blue", capsize=4,
                label="fleetrl runs (median, min-max)")
    noisy = [(n, x["steps_per_s"]) for n in ns for x in runs[n] if x["other_cores"] > max_other]
    if noisy:
        ax.plot(*zip(*noisy, strict=True), "x", color="tab:red", alpha=0.6,
                label=f"fleetrl runs disturbed (> {max_other} cores used by others)")
    ax.axvline(cores, color="tab:red", lw=0.8, alpha=0.5)
    ax.text(cores, ax.get_ylim()[1] * 0.97, f"{cores} cores ", color="tab:red", va="top", ha="right", fontsize=8)
    ax.set_xticks(ns)
    ax.set_xlim(ns[0] - 0.3, ns[-1] + 0.3)
    ax.set_xlabel("sim actors (N)")
    ax.set_ylabel("aggregate env steps/s")
    ax.set_title(f"fleetrl: env steps/s vs sim actors ({env_id}, {cores}-core machine)", fontsize=9)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def main() -> None:
    extra, rest = _extra_args()
    argv = sys.argv
    sys.argv = [argv[0], *rest]
    args = parse_args(__doc__.split("\n", 1)[0])
    sys.argv = argv
    cores = os.cpu_count() or 1
    max_n = extra.max_actors or (2 if args.quick else cores + 2)
    ns = list(range(1, max_n + 1))
    repeats = args.repeats or (1 if args.quick else 3)
    warmup = extra.warmup if extra.warmup is not None else (2.0 if args.quick else 3.0)
    window = extra.window if extra.window is not None else (6.0 if args.quick else 8.0)
    bare_window = extra.bare_window if extra.bare_window is not None else (3.0 if args.quick else 4.0)
    run_root = pathlib.Path(tempfile.mkdtemp(prefix="fleetrl_bench_scaling_"))
    overrides = [f"run_root={run_root}", f"name=scaling-{extra.env}", *ENVS[extra.env], *COMMON]
    cfgs = {n: load_config(None, [*overrides, f"actors.num_sim={n}"]) for n in ns}
    env_id = cfgs[1].env.id
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # for the bare processes, as Ray's workers get it

    t0 = time.monotonic()
    launcher._init_ray(cfgs[max_n], None)  # the launcher's own embedded start, for the largest N; shared by runs
    runs: dict[int, list[dict[str, Any]]] = {n: [] for n in ns}
    bare_runs: dict[int, list[dict[str, Any]]] = {n: [] for n in ns}
    failures: list[dict[str, Any]] = []
    try:
        for r in range(repeats):
            for n in ns:  # interleaved: plain N, fleet N, plain N+1, ...
                bare = bare_run(cfgs[n], n, bare_window)
                bare_runs[n].append(bare)
                try:
                    res = one_run(cfgs[n], warmup, window)
                except RuntimeError as exc:  # e.g. a process of the run killed from outside while it started
                    print(f"repeat {r + 1}/{repeats}  N={n}: run failed ({exc}); trying once more", flush=True)
                    failures.append({"repeat": r + 1, "actors": n, "error": str(exc)[:500]})
                    res = one_run(cfgs[n], warmup, window)
                runs[n].append(res)
                print(f"repeat {r + 1}/{repeats}  N={n}: fleet {res['steps_per_s']:,.0f} env steps/s "
                      f"(per actor {res['per_actor_steps_per_s']}, actor cores {res['actor_cores']}, "
                      f"machine busy {res['machine_busy_cores']} cores, other {res['other_cores']}); "
                      f"plain processes {bare['steps_per_s']:,.0f} ({bare['per_process_steps_per_s']}, other "
                      f"{bare['other_cores']})", flush=True)
    finally:
        ray.shutdown()
        shutil.rmtree(run_root, ignore_errors=True)
    total_s = time.monotonic() - t0

    mo = extra.max_other_cores
    agg = {n: _summary(runs[n], mo) for n in ns}
    bare_agg = {n: _summary(bare_runs[n], mo) for n in ns}
    one = agg[1]["median"]
    ideal = [n * one for n in ns]
    rows, ratios = [], {}
    for n, ideal_n in zip(ns, ideal, strict=True):
        s, b = agg[n], bare_agg[n]
        eff = s["median"] / ideal_n
        ratios[f"N={n} vs ideal"] = round(eff, 3)
        ratios[f"N={n} vs plain processes"] = round(s["median"] / b["median"], 3)
        used = [x for x in runs[n] if x["other_cores"] <= mo] or runs[n]
        actor_cores = statistics.median([sum(c or 0 for c in x["actor_cores"]) for x in used])
        per_cpu = statistics.median([x["steps_per_actor_cpu_s"] or 0 for x in used])
        other = statistics.median([x["other_cores"] for x in used])
        rows.append([n, f"{s['undisturbed_runs']}/{len(runs[n])}", s["median"], f"{s['min']:,.0f}-{s['max']:,.0f}",
                     ideal_n, f"{eff:.2f}", f"{s['median'] / one:.2f}", actor_cores, per_cpu, other,
                     f"{b['undisturbed_runs']}/{len(bare_runs[n])}", b["median"], f"{s['median'] / b['median']:.2f}",
                     s["all_runs"]["median"]])
    print_table(f"Aggregate env steps/s vs sim actors ({env_id}; {cores} cores; {repeats} repeat(s), window "
                f"{window:.0f} s after {warmup:.0f} s warm-up; medians over runs where other processes used <= {mo} "
                "cores)",
                ["N", "runs used", "steps/s", "min-max", "ideal", "x ideal", "speed-up", "actor cores",
                 "steps/actor-CPU-s", "other cores", "plain used", "plain procs", "x plain", "all runs"], rows)
    plot(ns, agg, bare_agg, runs, mo, ideal, cores, env_id, PLOT)
    print(f"plot: {PLOT.relative_to(PLOT.parents[2])}; total {total_s:.0f} s")
    params = {"env": extra.env, "env_id": env_id, "actors": ns, "repeats": repeats, "warmup_s": warmup,
              "window_s": window, "bare_window_s": bare_window, "max_other_cores": mo, "overrides": overrides[1:],
              "cores": cores, "total_s": round(total_s, 1), "plot": str(PLOT.relative_to(PLOT.parents[2]))}
    notes = [f"the machine has {cores} cores: N > {cores} sim actors (plus learner, replay, Ray) oversubscribe it",
             "ideal = N x the median 1-actor rate; 'other_cores' = machine busy minus this run's processes and the "
             "driver (Ray's daemons and other users of the shared machine)",
             f"medians over the runs with other_cores <= {mo} (undisturbed_runs); all_runs: over every run",
             "plain processes = the same env and untrained policy in N multiprocessing processes at niceness 15 "
             "(no Ray, replay, learner)"]
    save("bench_scaling", args, params,
         {"by_actors": {str(n): {**agg[n], "runs": runs[n]} for n in ns},
          "plain_processes": {str(n): {**bare_agg[n], "runs": bare_runs[n]} for n in ns},
          "ideal_steps_per_s": {str(n): v for n, v in zip(ns, ideal, strict=True)}, "failed_runs": failures},
         ratios, notes)


if __name__ == "__main__":
    main()
