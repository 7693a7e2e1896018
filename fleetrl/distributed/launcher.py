"""Starts a run on Ray: replay server, weight store, learner, sim actors; reports progress; shuts down cleanly."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from typing import Any

import ray

from fleetrl.config import TrainConfig, config_to_dict
from fleetrl.datasets.episode import DatasetError
from fleetrl.distributed.learner_worker import LearnerWorker
from fleetrl.distributed.replay_server import ReplayServer
from fleetrl.distributed.sim_actor import SimActor
from fleetrl.distributed.weights import WeightStore, policy_factory_default
from fleetrl.envs.gym_adapter import transition_spec
from fleetrl.progress import MetricsSink
from fleetrl.runs import RunPlan
from fleetrl.types import TransitionSpec

log = logging.getLogger(__name__)
_STATS_TIMEOUT_S = 60.0


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
        need = cfg.actors.num_sim + 1
        ray.init(address="local", num_cpus=max(os.cpu_count() or 1, need), include_dashboard=False,
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
        **last_ep,
        **{f"learner/{k}": v for k, v in learner["metrics"].items()},
    }


def train(plan: RunPlan, address: str | None = None, stop: threading.Event | None = None) -> dict[str, Any]:
    """Run training until ``total_env_steps``, ``max_wall_s``, a signal or ``stop``; returns a summary."""
    cfg, run_dir = plan.cfg, plan.run_dir
    spec = transition_spec(cfg.env)
    owns_ray = _init_ray(cfg, address)
    sink = MetricsSink(run_dir, cfg.logging, config_to_dict(cfg), run_name=run_dir.name)
    handles: dict[str, Any] = {}
    try:
        with _StopOnSignal() as signalled:
            summary = _run(plan, spec, handles, sink, signalled.event, stop)
    finally:
        _shutdown(handles)
        sink.close()
        if owns_ray:
            ray.shutdown()
    return summary


def _run(plan: RunPlan, spec: TransitionSpec, handles: dict[str, Any], sink: MetricsSink,
         signalled: threading.Event, stop: threading.Event | None) -> dict[str, Any]:
    cfg, run_dir = plan.cfg, plan.run_dir
    generation = plan.counters.get("generation", 0)
    replay = ReplayServer.remote(spec, cfg, str(run_dir / "replay"))
    handles["replay"] = replay
    try:
        address = ray.get(replay.address.remote())
    except DatasetError as exc:  # the offline loader refused a dataset: the message names episode and key
        raise DatasetError(str(getattr(exc, "cause", exc))) from None
    offline = ray.get(replay.offline_summary.remote())
    if offline is not None:
        log.warning("offline table: %s", {k: v for k, v in offline.items() if k not in ("datasets", "obs_stats")})
    store = WeightStore.remote()
    handles["store"] = store
    use_gpu = cfg.learner.device != "cpu" and ray.cluster_resources().get("GPU", 0) >= 1
    learner = LearnerWorker.options(num_gpus=1 if use_gpu else 0).remote(
        cfg, spec, address, replay, store, str(run_dir), plan.counters, plan.init_state,
        (offline or {}).get("obs_stats"))
    handles["learner"] = learner
    factory = policy_factory_default(spec, cfg.learner)
    resumed = plan.init_state is not None
    actors = [SimActor.remote(i, cfg, spec, address, store, factory, generation, resumed)
              for i in range(cfg.actors.num_sim)]
    handles["actors"] = actors
    handles["learner_run"] = learner.run.remote()
    handles["actor_runs"] = [a.run.remote() for a in actors]
    t0 = time.monotonic()
    prev: dict[str, Any] = {}
    last_ep: dict[str, float] = {}
    reason = "total_env_steps"
    while True:
        deadline = time.monotonic() + cfg.logging.interval_s
        while time.monotonic() < deadline and not signalled.is_set() and not (stop and stop.is_set()):
            time.sleep(0.05)
        done, _ = ray.wait([handles["learner_run"], *handles["actor_runs"]], num_returns=1, timeout=0)
        if done:
            ray.get(done)  # raises the worker's error; _shutdown still runs
            raise RuntimeError("a worker returned before it was asked to stop")
        # Bounded waits: a hung worker shows up as an error here instead of a frozen driver.
        actor_stats = ray.get([a.stats.remote() for a in actors], timeout=_STATS_TIMEOUT_S)
        learner_stats = ray.get(learner.stats.remote(), timeout=_STATS_TIMEOUT_S)
        replay_stats = ray.get(replay.stats.remote(), timeout=_STATS_TIMEOUT_S)
        row = _row(t0, prev, actor_stats, learner_stats, replay_stats, plan, last_ep)
        sink.write({k: v for k, v in row.items() if not k.startswith("_")})
        prev = row
        if signalled.is_set() or (stop and stop.is_set()):
            reason = "stop requested"
            break
        if row["env_steps"] >= cfg.total_env_steps:
            break
        if cfg.max_wall_s is not None and row["time_s"] >= cfg.max_wall_s:
            reason = "max_wall_s"
            break
    final = _stop_workers(handles)
    return {"reason": reason, "run_dir": str(run_dir), "env_steps": prev.get("env_steps"),
            "learner_steps": final["learner_steps"], "last_checkpoint": final["last_checkpoint"],
            "episode_return": prev.get("episode_return"), "success_rate": prev.get("success_rate")}


def _stop_workers(handles: dict[str, Any]) -> dict[str, Any]:
    """Actors first (they may be blocked on the rate limiter), then the learner, whose run ends in a checkpoint."""
    for a in handles.get("actors", []):
        a.stop.remote()
    ray.wait(handles.get("actor_runs", []), num_returns=len(handles.get("actor_runs", [])), timeout=60)
    handles["learner"].stop.remote()
    final = ray.get(handles.pop("learner_run"), timeout=600)
    handles.pop("actor_runs", None)
    return final


def _shutdown(handles: dict[str, Any]) -> None:
    """Best-effort teardown after success or failure: a final checkpoint if the learner still runs, then kill."""
    if "learner_run" in handles:
        try:
            _stop_workers(handles)
        except Exception:  # noqa: BLE001 - teardown continues; the original error is what the user sees
            log.exception("could not stop the workers cleanly")
    if "replay" in handles:
        try:
            ray.get(handles["replay"].stop.remote(), timeout=30)
        except Exception:  # noqa: BLE001
            log.exception("could not stop the replay server cleanly")
    for h in [*handles.get("actors", []), handles.get("learner"), handles.get("store"), handles.get("replay")]:
        if h is not None:
            ray.kill(h, no_restart=True)
