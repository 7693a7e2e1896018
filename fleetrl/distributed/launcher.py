"""Starts a run on Ray (the fleet of :mod:`fleetrl.distributed.supervisor`), watches and restarts its processes,
reports progress and ``status.json``, and shuts down cleanly."""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

import ray

from fleetrl.config import ConfigError, TrainConfig, config_to_dict, robot_from_dict
from fleetrl.distributed.control import Inbox
from fleetrl.distributed.status_report import StatusReporter
from fleetrl.distributed.supervisor import Fleet
from fleetrl.envs.gym_adapter import transition_spec
from fleetrl.progress import MetricsSink
from fleetrl.runs import RunPlan

log = logging.getLogger(__name__)


def _init_ray(cfg: TrainConfig, address: str | None) -> bool:
    """Start (or join) Ray; returns True if this process started it and must shut it down."""
    if ray.is_initialized():
        return False
    env_vars = {"OMP_NUM_THREADS": "1", "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONWARNINGS": "ignore::DeprecationWarning"}
    if address:
        ray.init(address=address, runtime_env={"env_vars": env_vars}, log_to_driver=True)
    else:
        # Logical CPUs are scheduling tokens: give every actor and the learner one even on a 2-core machine.
        # address="local": always a fresh embedded instance, even if RAY_ADDRESS or a cluster started with
        # `ray start` on this machine exists (joining one is what --address is for).
        need = cfg.actors.num_sim + len(cfg.robots) + 1
        # A robot named in `robots` is wired to this machine: its custom resource is offered here.
        robot_resources = {r.resource: 1.0 for r in cfg.robots if r.resource}
        # Two spare tokens: robots attached at run time (`fleetrl attach`) need somewhere to run.
        ray.init(address="local", num_cpus=max(os.cpu_count() or 1, need) + 2, include_dashboard=False,
                 resources=robot_resources or None,
                 runtime_env={"env_vars": env_vars}, log_to_driver=True, logging_level=logging.WARNING)
    return True


class _StopOnSignal:
    """SIGINT / SIGTERM request a clean stop (final checkpoint, no processes left) instead of killing the driver."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self._old: dict[int, Any] = {}

    def __enter__(self) -> _StopOnSignal:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.event.is_set():  # a second Ctrl-C: stop waiting politely
            raise KeyboardInterrupt
        log.warning("signal %s: stopping cleanly (final checkpoint); press Ctrl-C again to abort", signum)
        self.event.set()

    def __exit__(self, *exc: Any) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


def _row(t0: float, prev: dict[str, Any], actors: list[dict], learner: dict, replay: dict,
         plan: RunPlan, last_ep: dict[str, float]) -> dict[str, Any]:
    now = time.monotonic()
    env_steps = plan.counters.get("env_steps", 0) + replay["inserts"]
    learner_steps = learner["learner_steps"]
    dt = max(now - prev.get("_t", t0), 1e-9)
    episodes = [e for a in actors for e in a["episodes"]]
    steps = sum(e["length"] for e in episodes)
    interventions = sum(e.get("interventions", 0) for e in episodes)
    if episodes:
        last_ep["episode_return"] = sum(e["ret"] for e in episodes) / len(episodes)
        last_ep["success_rate"] = sum(e["success"] for e in episodes) / len(episodes)
        last_ep["episode_length"] = sum(e["length"] for e in episodes) / len(episodes)
    versions = [a["policy_version"] for a in actors if a["policy_version"] >= 0]
    latencies = [a["weight_latency_s"] for a in actors if a["weight_latency_s"] is not None]
    # Updates per env step since this start, counted after the table first reached min_size (before that the
    # rate limiter lets no sampling happen, so those inserts are not part of the ratio it holds).
    fill = max(0, plan.cfg.replay.min_size - replay["restored_size"])
    new_inserts = replay["inserts"] - fill
    new_updates = learner_steps - plan.counters.get("learner_steps", 0)
    # Per robot: how far behind the learner the policy acting on it is (in learner steps), and its write queue.
    robots: dict[str, Any] = {}
    for a in actors:
        if a.get("robot"):
            in_use = a.get("policy_version_in_use", -1)
            robots[f"robot/{a['robot']}/policy_lag"] = learner_steps - in_use if in_use >= 0 else None
            robots[f"robot/{a['robot']}/pending_episodes"] = a.get("pending_episodes")
    return {
        "_t": now, "time_s": now - t0, "env_steps": env_steps, "learner_steps": learner_steps,
        "env_steps_per_s": (env_steps - prev.get("env_steps", env_steps)) / dt if prev else 0.0,
        "updates_per_s": (learner_steps - prev.get("learner_steps", learner_steps)) / dt if prev else 0.0,
        # Over the last interval: the ratio the limiter holds now. The total lags at first, because actors may run
        # replay.rate_tolerance_steps ahead of the learner before they block.
        "utd_ratio": ((learner_steps - prev["learner_steps"]) / (env_steps - prev["env_steps"])
                      if prev and env_steps > prev["env_steps"] and new_inserts > 0 else None),
        "utd_ratio_total": new_updates / new_inserts if new_inserts > 0 else 0.0,
        "replay_size": replay["size"], "replay_samples": replay["samples"], "replay_inserts": replay["inserts"],
        "episodes": sum(a["episodes_written"] for a in actors),  # since this start
        "policy_version": learner["policy_version"],
        "policy_lag": (learner_steps - min(versions)) if versions else None,
        "weight_latency_s": max(latencies) if latencies else None,
        # Steps a person chose, over the episodes finished since the previous row (HIL-SERL's intervention rate).
        "interventions": interventions, "intervention_rate": interventions / steps if steps else None,
        **last_ep, **robots,
        **{f"learner/{k}": v for k, v in learner["metrics"].items()},
    }


def _log_episodes(run_dir: Any, actors: list[dict[str, Any]]) -> None:
    """One line per finished episode in ``RUN_DIR/episodes.jsonl``: actor, return, success, length, how many steps a
    person chose, the policy versions used, whether it was stored or aborted."""
    lines = [json.dumps({"actor_id": a["actor_id"], "kind": a.get("kind"), "robot": a.get("robot"), **e})
             for a in actors for e in a["episodes"]]
    if lines:
        with (run_dir / "episodes.jsonl").open("a") as fh:
            fh.write("\n".join(lines) + "\n")


def _serve_commands(fleet: Fleet, inbox: Inbox) -> None:
    """Carry out what ``fleetrl attach`` / ``detach`` / ``label`` asked (a detach is answered once it is done)."""
    for cmd in inbox.take():
        args = cmd["args"]
        try:
            if cmd["op"] == "attach":
                robot = robot_from_dict(args.get("robot"))
                slot = fleet.attach(robot)
                inbox.answer(cmd, ok=True, robot=robot.name, actor_id=slot.actor_id)
            elif cmd["op"] == "detach":
                fleet.detach(str(args.get("robot")), cmd, now=bool(args.get("now", False)))
            else:
                fleet.label(str(args.get("robot")), str(args.get("outcome")))
                inbox.answer(cmd, ok=True, robot=args.get("robot"), outcome=args.get("outcome"))
        except (ConfigError, ValueError) as exc:
            inbox.answer(cmd, ok=False, error=str(exc))
        except Exception as exc:  # noqa: BLE001 - a failed command must not stop the run
            log.exception("command %s failed", cmd["op"])
            inbox.answer(cmd, ok=False, error=f"{type(exc).__name__}: {exc}")


def train(plan: RunPlan, address: str | None = None, stop: threading.Event | None = None,
          on_start: Callable[[Fleet], None] | None = None) -> dict[str, Any]:
    """Run training until ``total_env_steps``, ``max_wall_s``, a signal or ``stop``; returns a summary.

    ``on_start`` is called with the started :class:`Fleet` (fault-injection tests and benchmarks use it)."""
    cfg, run_dir = plan.cfg, plan.run_dir
    spec = transition_spec(cfg.env)
    owns_ray = _init_ray(cfg, address)
    sink = MetricsSink(run_dir, cfg.logging, config_to_dict(cfg), run_name=run_dir.name)
    fleet = Fleet(plan, spec)
    reporter = StatusReporter(fleet, run_dir)
    state, row = "failed", {}
    try:
        with _StopOnSignal() as signalled:
            fleet.start()
            if on_start is not None:
                on_start(fleet)
            summary, row = _run(fleet, plan, sink, reporter, signalled.event, stop)
            state = "stopped"
    finally:
        fleet.shutdown()
        sink.close()
        try:
            reporter.write(row, state)
        except Exception:  # noqa: BLE001 - the status file is informational; never mask the run's own error
            log.exception("could not write the final status")
        if owns_ray:
            ray.shutdown()
    return summary


def _run(fleet: Fleet, plan: RunPlan, sink: MetricsSink, reporter: StatusReporter, signalled: threading.Event,
         stop: threading.Event | None) -> tuple[dict[str, Any], dict[str, Any]]:
    cfg, run_dir = plan.cfg, plan.run_dir
    t0 = time.monotonic()
    prev: dict[str, Any] = {}
    last_ep: dict[str, float] = {}
    reason = "total_env_steps"
    inbox = Inbox(run_dir)
    while True:
        deadline = time.monotonic() + cfg.logging.interval_s
        while time.monotonic() < deadline and not signalled.is_set() and not (stop and stop.is_set()):
            _serve_commands(fleet, inbox)
            time.sleep(0.1)
        fleet.check()  # restarts whatever died; raises once a process has used up its restarts
        while fleet.detached:
            command, result = fleet.detached.pop(0)
            inbox.answer(command, ok=result["error"] is None, **{k: v for k, v in result.items() if k != "error"},
                         error=result["error"])
        stats = fleet.poll()
        _log_episodes(run_dir, stats["actors"])  # drained from the actors: logged now or never
        if stats["learner"] is None or stats["replay"] is None:
            continue
        row = _row(t0, prev, stats["actors"], stats["learner"], stats["replay"], plan, last_ep)
        sink.write({k: v for k, v in row.items() if not k.startswith("_")})
        reporter.write(row)
        prev = row
        if signalled.is_set() or (stop and stop.is_set()):
            reason = "stop requested"
            break
        if row["env_steps"] >= cfg.total_env_steps:
            break
        if cfg.max_wall_s is not None and row["time_s"] >= cfg.max_wall_s:
            reason = "max_wall_s"
            break
    final = fleet.stop()
    failures = [e for e in fleet.events if e["action"].startswith("restarted")]
    return ({"reason": reason, "run_dir": str(run_dir), "env_steps": prev.get("env_steps"),
             "learner_steps": final["learner_steps"], "last_checkpoint": final["last_checkpoint"],
             "episode_return": prev.get("episode_return"), "success_rate": prev.get("success_rate"),
             "restarts": {s.name: s.restarts for s in [fleet.replay_slot, *fleet.slots()] if s.restarts},
             "lost_items": fleet.lost_items, "failures": len(failures)}, prev)
