"""Recovery time per failure type in a real run: a sim actor, the learner and the replay server SIGKILLed in turn.

Each repeat is one real run of the default training job (``launcher.train``, embedded Ray started by the run
itself as ``fleetrl train`` does; InvertedPendulum-v5, 2 sim actors, SAC 256x256, UTD 1), with a learner + Reverb
checkpoint every 300 updates (default 5,000, i.e. minutes) so that a restarted learner and replay have one to
restore. ``logging.interval_s`` (2 s: the supervisor checks its processes once per interval) and
``recovery.probe_after_s`` (3 s: how long a writer or sampler waits before it asks whether the replay still
answers) keep their defaults; both bound the detection times below.

Baseline: a **cold start of the same run**, measured in the same repeat: from the ``train()`` call (Ray not
running yet) until the learner's first update, with the steps on the way (fleet started, learner published its
first weights, every actor stepping). Without fleetrl's supervisor none of the three failures is survived: a dead
actor, learner or replay ends the run (its peers block or fail) and it has to be restarted by hand, i.e. at least
a cold start, plus the lost progress where there is no checkpoint.

Every time is measured from the kill, ``time.time()`` just before ``os.kill(pid, SIGKILL)``, to the moment this
script observes the state (stats polled every 0.1 s through the processes' Ray handles; the replay's restart time
is its own ``ready_at`` stamp):

- **actor 0** (mid-run): the supervisor restarted it (its ``restarted`` event), the new process (``incarnation`` 1)
  answers, has stepped, and has written steps to replay (``steps_written`` > 0: items are created when an episode
  ends, so this includes finishing one episode);
- **learner**: restarted; the new learner (``epoch`` 1, loaded from the newest checkpoint) has published its
  weights (``policy_version`` >= 0), has taken an update, and every actor holds its weights (``policy_epoch``);
- **replay server**: Ray restarted it from its Reverb checkpoint (new ``incarnation``, its ``ready_at``); the learner
  updates again (``learner_steps`` grows past its value when the new incarnation became ready); every actor has
  reconnected (``replay_incarnation``) and created items in it; and the ``lost_items`` the supervisor counted.

Options beside ``--quick`` (1 repeat) / ``--repeats N`` (default 3): ``--set KEY=VALUE`` (repeatable) adds config
overrides, e.g. ``--set logging.interval_s=0.5``. Writes ``bench/results/bench_recovery.json``.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

import ray
from _common import parse_args, print_table, save, summary

from fleetrl.config import TrainConfig, load_config
from fleetrl.distributed.launcher import train
from fleetrl.runs import new_run

OVERRIDES = [
    "name=recovery", "total_env_steps=1000000000", "checkpoint.every_updates=300",
    "logging.live=false", "logging.wandb=false",
]
POLL_S = 0.1
#: What a new learner process imports before it can do anything (diagnostic: timed in a fresh interpreter).
IMPORTS = ("import time; t = time.perf_counter(); import torch, tensorflow, reverb, ray; "
           "import fleetrl.distributed.learner_worker, fleetrl.distributed.replay, fleetrl.learners.builder; "
           "print(time.perf_counter() - t)")


class Probe:
    """Latest ``stats`` of a handle chosen at call time, with at most one call in flight (never piles calls up on a
    dead or restarting process)."""

    def __init__(self, call: Callable[[], Any]):
        self._call, self._ref = call, None

    def get(self) -> dict[str, Any] | None:
        if self._ref is None:
            self._ref = self._call()
        ready, _ = ray.wait([self._ref], timeout=0)
        if not ready:
            return None
        ref, self._ref = self._ref, None
        try:
            return ray.get(ref)
        except Exception:  # noqa: BLE001 - the process died or is restarting: ask again later
            return None


def _until(conditions: dict[str, Callable[[], bool]], t_ref: float, timeout_s: float,
           each: Callable[[], None] = lambda: None) -> dict[str, float]:
    """Poll until every condition held once; returns name -> seconds from ``t_ref`` when it was first seen true."""
    seen: dict[str, float] = {}
    deadline = time.monotonic() + timeout_s
    while len(seen) < len(conditions):
        each()
        now = time.time()
        for name, cond in conditions.items():
            if name not in seen and cond():
                seen[name] = now - t_ref
        if time.monotonic() > deadline:
            missing = [n for n in conditions if n not in seen]
            raise RuntimeError(f"timed out after {timeout_s} s waiting for {missing}")
        time.sleep(POLL_S)
    return seen


def _restart_time(fleet: Any, component: str, since: int) -> float | None:
    """Wall time of the supervisor's "restarted" event for ``component`` among the events after index ``since``."""
    for event in fleet.events[since:]:
        if event["component"] == component and event["action"] == "restarted":
            return event["time"]
    return None


def _kill(pid: int) -> float:
    t = time.time()
    os.kill(pid, signal.SIGKILL)
    return t


def import_time_s() -> float:
    """Seconds a fresh Python process (at Ray's worker niceness) takes to import what a learner imports."""
    out = subprocess.run(["nice", "-n", "15", sys.executable, "-c", IMPORTS], capture_output=True, text=True,
                         timeout=300, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    return float(out.stdout.strip().splitlines()[-1])


def one_run(cfg: TrainConfig) -> dict[str, Any]:
    plan = new_run(cfg)
    box: dict[str, Any] = {}
    started, stop = threading.Event(), threading.Event()

    def on_start(fleet: Any) -> None:
        box["fleet"], box["t_started"] = fleet, time.time()
        started.set()

    def target() -> None:
        box["t_call"] = time.time()
        try:
            box["summary"] = train(plan, stop=stop, on_start=on_start)
        except BaseException as exc:  # noqa: BLE001 - reported by the caller
            box["error"] = exc
            started.set()

    assert not ray.is_initialized(), "each repeat's run starts its own Ray"
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    out: dict[str, Any] = {}
    try:
        if not started.wait(300) or "error" in box:
            raise RuntimeError(f"run did not start: {box.get('error')!r}")
        fleet = box["fleet"]
        ids = sorted(fleet.actors)
        learner = Probe(lambda: fleet.learner.handle.stats.remote())
        actors = {i: Probe(lambda i=i: fleet.actors[i].handle.stats.remote(drain=False)) for i in ids}
        last: dict[str, Any] = {}

        def refresh() -> None:
            st = learner.get()
            if st is not None:
                last["learner"] = st
                last.setdefault("learner_series", []).append((time.time(), st["epoch"], st["learner_steps"]))
            for i, p in actors.items():
                st = p.get()
                if st is not None:
                    last[i] = st

        lrn = lambda: last.get("learner") or {}  # noqa: E731
        act = lambda i: last.get(i) or {}  # noqa: E731

        # ---- cold start (the baseline) ----
        t_call = box["t_call"]
        cold = {"fleet_started": box["t_started"] - t_call}
        cold.update(_until({
            "learner_published": lambda: lrn().get("policy_version", -1) >= 0,
            "actors_stepping": lambda: all(act(i).get("env_steps", 0) > 0 for i in ids),
            "first_update": lambda: lrn().get("learner_steps", 0) >= 1,
        }, t_call, 300, refresh))
        out["cold_start_s"] = cold
        _until({"checkpoint": lambda: bool(lrn().get("last_checkpoint"))}, time.time(), 300, refresh)
        time.sleep(2.0)

        # ---- 1. a sim actor ----
        slot = fleet.actors[0]
        pid = ray.get(slot.handle.pid.remote(), timeout=30)
        n_events = len(fleet.events)
        t_kill = _kill(pid)
        new_actor = lambda: act(0).get("incarnation") == 1  # noqa: E731
        res = _until({
            "restarted": lambda: _restart_time(fleet, slot.name, n_events) is not None,
            "answering": new_actor,
            "stepping": lambda: new_actor() and act(0)["env_steps"] > 0,
            "written": lambda: new_actor() and act(0)["steps_written"] > 0,
        }, t_kill, 180, refresh)
        res["restarted"] = _restart_time(fleet, slot.name, n_events) - t_kill  # the supervisor's own stamp
        assert ray.get(slot.handle.pid.remote(), timeout=30) != pid
        out["actor_s"] = res
        time.sleep(2.0)

        # ---- 2. the learner ----
        lslot = fleet.learner
        before = ray.get(lslot.handle.stats.remote(), timeout=30)  # fresh, just before the kill
        env_before = {i: ray.get(fleet.actors[i].handle.stats.remote(drain=False), timeout=30)["env_steps"]
                      for i in ids}
        pid = ray.get(lslot.handle.pid.remote(), timeout=30)
        n_events = len(fleet.events)
        t_kill = _kill(pid)
        new_learner = lambda: lrn().get("epoch") == 1  # noqa: E731
        res = _until({
            "restarted": lambda: _restart_time(fleet, "learner", n_events) is not None,
            "answering": new_learner,
            "published": lambda: new_learner() and lrn()["policy_version"] >= 0,
            "updating": lambda: new_learner() and lrn()["learner_steps"] > lrn()["initial_steps"],
            "actors_on_new_weights": lambda: all(act(i).get("policy_epoch") == 1 for i in ids),
        }, t_kill, 300, refresh)
        res["restarted"] = _restart_time(fleet, "learner", n_events) - t_kill
        out["learner_s"] = res
        restored = lrn()["initial_steps"]
        out["learner_detail"] = {
            "learner_steps_at_kill": before["learner_steps"], "restored_learner_steps": restored,
            "updates_rolled_back": before["learner_steps"] - restored,
            "actor_env_steps_while_learner_down": {i: act(i)["env_steps"] - env_before[i] for i in ids}}
        time.sleep(3.0)

        # ---- 3. the replay server ----
        old_inc = fleet.replay_incarnation
        replay_before = ray.get(fleet.replay.stats.remote(), timeout=30)
        endpoint = Probe(lambda: fleet.replay.endpoint.remote())
        new_ep: dict[str, Any] = {}

        def refresh_all() -> None:
            refresh()
            if not new_ep:
                ep = endpoint.get()
                if ep is not None and ep["incarnation"] != old_inc:
                    new_ep.update(ep)

        n_events = len(fleet.events)
        pid = ray.get(fleet.replay.pid.remote(), timeout=30)
        last["learner_series"] = []
        t_kill = _kill(pid)
        new_inc = lambda: new_ep.get("incarnation")  # noqa: E731

        def learner_advanced() -> bool:
            if not new_ep:
                return False
            series = last["learner_series"]
            before_ready = [s for t, _, s in series if t <= new_ep["ready_at"]]
            return bool(before_ready) and any(s > before_ready[-1] for t, _, s in series if t > new_ep["ready_at"])

        res = _until({
            "seen_restarted": lambda: bool(new_ep),
            "learner_updating": learner_advanced,
            "actors_reconnected": lambda: bool(new_ep) and all(
                act(i).get("replay_incarnation") == new_inc() for i in ids),
            "actors_writing": lambda: bool(new_ep) and all(
                act(i).get("items_by_replay", {}).get(new_inc(), 0) > 0 for i in ids),
            "loss_counted": lambda: any(e.get("lost_items") is not None for e in fleet.events[n_events:]),
        }, t_kill, 300, refresh_all)
        res["restarted"] = new_ep["ready_at"] - t_kill  # the new incarnation's own stamp: restored and serving
        res["process_started"] = new_ep["started_at"] - t_kill
        out["replay_s"] = res
        lost = [e["lost_items"] for e in fleet.events[n_events:] if e.get("lost_items") is not None]
        ckpt = replay_before.get("last_checkpoint") or {}
        out["replay_detail"] = {
            "lost_items": lost[0], "size_at_kill": replay_before["size"],
            "inserts_at_kill": replay_before["inserts"], "restored_from": new_ep.get("restored_from"),
            "last_checkpoint_age_s_at_kill": (t_kill - ckpt["time"]) if ckpt else None}
        out["supervisor_events"] = [{k: e[k] for k in ("component", "what", "action", "recovery_s", "lost_items")}
                                    for e in fleet.events]
    finally:
        stop.set()
        thread.join(300)
    if "error" in box:
        raise RuntimeError(f"run failed: {box['error']!r}")
    out["summary"] = {k: box["summary"][k] for k in ("restarts", "lost_items", "failures", "learner_steps")}
    return out


def main() -> None:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--set", action="append", default=[], dest="overrides")
    extra, rest = p.parse_known_args()
    argv = sys.argv
    sys.argv = [argv[0], *rest]
    args = parse_args(__doc__.split("\n", 1)[0])
    sys.argv = argv
    repeats = args.repeats or (1 if args.quick else 3)
    run_root = pathlib.Path(tempfile.mkdtemp(prefix="fleetrl_bench_recovery_"))
    overrides = [f"run_root={run_root}", *OVERRIDES, *extra.overrides]
    cfg = load_config(None, overrides)
    t0 = time.monotonic()
    runs = []
    try:
        for r in range(repeats):
            imports = import_time_s()
            res = one_run(cfg)
            res["imports_s"] = imports
            runs.append(res)
            print(f"repeat {r + 1}/{repeats}: cold start {res['cold_start_s']['first_update']:.1f} s; actor "
                  f"{res['actor_s']['written']:.1f} s, learner {res['learner_s']['published']:.1f} / "
                  f"{res['learner_s']['actors_on_new_weights']:.1f} s, replay "
                  f"{res['replay_s']['learner_updating']:.1f} / {res['replay_s']['actors_writing']:.1f} s, "
                  f"lost {res['replay_detail']['lost_items']} items", flush=True)
    finally:
        shutil.rmtree(run_root, ignore_errors=True)
    total_s = time.monotonic() - t0

    def stat(section: str, key: str) -> dict[str, float]:
        return summary([r[section][key] for r in runs])

    cold = stat("cold_start_s", "first_update")["median"]
    rows, results, ratios = [], {}, {}
    labels = {
        "cold_start_s": ("cold start (baseline)", {
            "fleet_started": "train() -> Ray up, fleet started (on_start)",
            "learner_published": "-> learner published its first weights",
            "actors_stepping": "-> every actor stepping",
            "first_update": "-> first learner update"}),
        "actor_s": ("sim actor killed", {
            "restarted": "supervisor restarted it", "answering": "new process answers",
            "stepping": "new process stepping", "written": "new process wrote steps to replay"}),
        "learner_s": ("learner killed", {
            "restarted": "supervisor restarted it", "answering": "new learner answers",
            "published": "new learner published weights", "updating": "new learner updating",
            "actors_on_new_weights": "every actor on its weights"}),
        "replay_s": ("replay server killed", {
            "process_started": "new process running, Reverb imported",
            "restarted": "new incarnation restored and serving",
            "seen_restarted": "(seen by this script)", "learner_updating": "learner updating again",
            "actors_reconnected": "every actor reconnected", "actors_writing": "every actor writing to it",
            "loss_counted": "supervisor counted the lost items"}),
    }
    for section, (title, keys) in labels.items():
        results[section] = {}
        for key, what in keys.items():
            s = stat(section, key)
            results[section][key] = s
            rows.append([title, what, s["median"], f"{s['min']:.1f}-{s['max']:.1f}",
                         "" if section == "cold_start_s" else f"{s['median'] / cold:.2f}"])
            title = ""
    headline = {"actor": ("actor_s", "written"), "learner": ("learner_s", "published"),
                "learner, every actor on its weights": ("learner_s", "actors_on_new_weights"),
                "replay, learner updating": ("replay_s", "learner_updating"),
                "replay, every actor writing": ("replay_s", "actors_writing")}
    for name, (section, key) in headline.items():
        ratios[f"{name} vs cold start"] = round(results[section][key]["median"] / cold, 3)
    print_table(f"Recovery after SIGKILL, seconds from the kill ({repeats} run(s); logging.interval_s="
                f"{cfg.logging.interval_s}, recovery.probe_after_s={cfg.recovery.probe_after_s})",
                ["failure", "until", "median s", "min-max", "x cold start"], rows)
    lost = [r["replay_detail"]["lost_items"] for r in runs]
    print(f"\nreplay: lost items {lost}, checkpoint age at the kill "
          f"{[round(r['replay_detail']['last_checkpoint_age_s_at_kill'] or -1, 1) for r in runs]} s; learner "
          f"updates rolled back {[r['learner_detail']['updates_rolled_back'] for r in runs]}; total {total_s:.0f} s")
    results["lost_items"] = summary(lost)
    results["imports_s"] = summary([r["imports_s"] for r in runs])
    print(f"a fresh interpreter imports torch, tensorflow, reverb, ray and fleetrl's learner modules in "
          f"{results['imports_s']['median']:.1f} s (median)")
    results["runs"] = runs
    params = {"repeats": repeats, "overrides": overrides[1:], "env": cfg.env.id, "num_sim": cfg.actors.num_sim,
              "logging_interval_s": cfg.logging.interval_s, "probe_after_s": cfg.recovery.probe_after_s,
              "checkpoint_every_updates": cfg.checkpoint.every_updates, "poll_s": POLL_S,
              "total_s": round(total_s, 1)}
    notes = ["times from time.time() just before os.kill(SIGKILL) to the first poll (every 0.1 s) that saw the "
             "state; 'restarted' is the supervisor's own stamp (actor, learner) or the new replay's ready_at",
             "ratios: recovery median / cold-start median (train() call until the first learner update, Ray "
             "started by the run, driver imports excluded)"]
    save("bench_recovery", args, params, results, ratios, notes)


if __name__ == "__main__":
    main()
