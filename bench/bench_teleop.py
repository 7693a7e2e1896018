"""Teleop latency with real Ray: a device event in the operator's process -> the action executed by the actor's env.

A scripted input device in this (the driver) process changes its state every ~0.3 s (a new 7-D Bridge action each
time, random in [-1, 1]; takeover held throughout). ``run_teleop`` sends its newest state at 50 Hz through a
:class:`TeleopClient` to the teleop endpoint of a real :class:`SimActor` stepping ``fleetrl/WidowXReach-v0`` (state
only, ``terminate_on_success: false``, the task's 60-step episodes, written to a real Reverb ``ReplayServer`` whose
rate limiter never blocks; the actor's policy is a constant one published to a ``WeightStore`` first). The device
replays a schedule through :class:`RecordedDevice` (see :class:`ScriptedDevice`): each state change carries its
scheduled time as the event time, and the change times are jittered (0.3 s +- 0.05 s) so they fall at random phases
of the client's 50 Hz reads and of the actor's steps.

Figures per variant, each once per device event, all from ``time.time()`` (one machine, one clock):

- executed: device event -> ``env.step`` returned with that action (the actor's ``teleop_latency_s``);
- arrival: device event -> the command arrived at the actor's endpoint (``teleop_receive_latency_s``); it includes
  the client's sampling (an event waits up to one 20 ms client period to be read) and the socket;
- client: the same executed figure computed by the operator's client from the actor's acks (``applied_at``).

Variants: ``local`` (``ray.init`` on this machine; the actor on the driver's node) at actor control rates of 50 Hz
(``actors.max_steps_per_s=50``) and 5 Hz (a robot's rate); ``cluster`` (``ray.cluster_utils.Cluster``: a head and a
second node with a custom resource, both on this machine; the actor placed on the second node with
``SimActor.options(resources=...)`` and reached at the endpoint address it advertises in ``stats()["teleop"]``) at
the same two rates. Each variant is a fresh actor; its session starts once the actor steps.

Baseline: the actor's control period. A command that has arrived waits for the actor's next step, on average half a
period and at most one; ratios are p50 / period and p99 / period. At 5 Hz the period is also a robot's 200 ms step
budget.
"""

from __future__ import annotations

import os
import random
import statistics
import tempfile
import time
from typing import Any

import numpy as np
import ray
from _common import parse_args, percentile, print_table, save
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from fleetrl.config import load_config
from fleetrl.distributed.replay_server import ReplayServer
from fleetrl.distributed.sim_actor import SimActor
from fleetrl.distributed.weights import WeightStore
from fleetrl.envs.gym_adapter import transition_spec
from fleetrl.teleop.client import RecordedDevice, RecordedState, TeleopClient, run_teleop
from fleetrl.testing import constant_policy_factory, wait_for

ENV_ID = "fleetrl/WidowXReach-v0"
CLIENT_HZ = 50.0
EVENT_EVERY_S = 0.3
EVENT_JITTER_S = 0.05
RATES_HZ = (50.0, 5.0)
TOKEN = "bench-teleop-token"
RUNTIME_ENV = {"env_vars": {"OMP_NUM_THREADS": "1", "TF_CPP_MIN_LOG_LEVEL": "2", "MUJOCO_GL": "egl"}}


def config(rate_hz: float) -> Any:
    return load_config(None, [
        f"env.id={ENV_ID}", "env.kwargs={privileged: false, terminate_on_success: false}", "env.success=info",
        "env.max_episode_steps=null", "actors.random_steps=0", f"actors.max_steps_per_s={rate_hz}",
        "replay.min_size=64", "learner.batch_size=64", "replay.updates_per_step=0.001",
        "replay.rate_tolerance_steps=1000000",
        "teleop.bind=0.0.0.0", "teleop.timeout_s=0.5"])


def device_states(duration_s: float, rng: random.Random) -> list[RecordedState]:
    """A new random 7-D action every ~0.3 s (jittered), takeover held the whole time."""
    states, t = [], 0.0
    while t < duration_s:
        states.append(RecordedState(t=t, action=[round(rng.uniform(-1, 1), 4) for _ in range(7)], takeover=True))
        t += EVENT_EVERY_S + rng.uniform(-EVENT_JITTER_S, EVENT_JITTER_S)
    return states


class ScriptedDevice:
    """The scripted input device: :class:`RecordedDevice`'s schedule, with each state change stamped once.

    ``RecordedDevice.read`` recomputes a state's event time at every read from two clocks
    (``time.time() - (elapsed - s.t)``), so the value differs by microseconds between reads and the actor counts every
    50 Hz heartbeat as a new device event (its latency then grows by 20 ms per heartbeat). Here the event time of a
    state is computed at the read that first sees it and then repeated unchanged, as a real device reports it."""

    name = "scripted"

    def __init__(self, states: list[RecordedState]):
        self._inner = RecordedDevice(states)
        self._last: tuple[tuple[float, ...], bool] | None = None
        self._event_at = 0.0

    def read(self) -> Any:
        state = self._inner.read()
        key = (tuple(state.action.tolist()), state.takeover)
        if key != self._last:
            self._last, self._event_at = key, state.event_at
        state.event_at = self._event_at
        return state

    def close(self) -> None:
        self._inner.close()


def ms(values: list[float]) -> dict[str, Any]:
    if not values:
        return {"n": 0}
    v = [1e3 * x for x in values]
    return {"n": len(v), "p50": percentile(v, 50), "p90": percentile(v, 90), "p99": percentile(v, 99),
            "max": max(v), "min": min(v), "mean": statistics.fmean(v)}


def session(path: str, rate_hz: float, duration_s: float, replay: Any, store: Any, spec: Any,
            rng: random.Random, options: dict[str, Any]) -> dict[str, Any]:
    """One fresh actor at ``rate_hz``, taken over by the scripted device for ``duration_s``."""
    actor = SimActor.options(**options).remote(0, config(rate_hz), spec, replay, store,
                                               constant_policy_factory(spec.action.shape), teleop_token=TOKEN)
    run = actor.run.remote(wait_for_version=0)
    stats = lambda: ray.get(actor.stats.remote(drain=False))  # noqa: E731
    try:
        wait_for(lambda: stats()["env_steps"] >= 2, 120, f"the {path} actor stepping")
        before = stats()
        address = before["teleop"]
        client = TeleopClient(address, TOKEN)
        t0 = time.monotonic()
        out = run_teleop(client, ScriptedDevice(device_states(duration_s, rng)), rate_hz=CLIENT_HZ,
                         duration_s=duration_s)
        wall = time.monotonic() - t0
        client_latency = list(client.latency_s)
        client.close()
        after = stats()
        assert not after["controlled"], "the client let go at the end of its session"
        episodes = [e for e in after["episodes"] if e["interventions"]]
    finally:
        ray.get(actor.stop.remote())
        try:
            ray.get(run, timeout=60)
        finally:
            ray.kill(actor)
    return {
        "path": path, "actor_rate_hz": rate_hz, "period_ms": 1e3 / rate_hz, "duration_s": wall,
        "endpoint": address, "actor_node_id": after["node_id"], "actor_node_ip": after["node"],
        "driver_node_id": ray.get_runtime_context().get_node_id(),
        "commands_sent": out["commands"], "missed_replies": out["missed_replies"],
        "actor_commands": after["teleop_commands"] - before["teleop_commands"], "drops": after["teleop_drops"],
        "actor_steps_per_s": (after["env_steps"] - before["env_steps"]) / wall,
        # Only the episodes that finished during the session (a 60-step episode at 5 Hz lasts 12 s).
        "intervened_steps": sum(e["interventions"] for e in episodes),
        "executed_ms": ms(after["teleop_latency_s"]), "arrival_ms": ms(after["teleop_receive_latency_s"]),
        "client_ms": ms(client_latency),
        "raw_s": {"executed": after["teleop_latency_s"], "arrival": after["teleop_receive_latency_s"],
                  "client": client_latency},
    }


def env_step_ms(steps: int) -> dict[str, Any]:
    """Diagnostic: ``env.step`` time of the same env in this process (random actions), before Ray starts."""
    from fleetrl.envs.gym_adapter import make_env

    env = make_env(config(RATES_HZ[0]).env)
    env.reset(seed=0)
    times = []
    for _ in range(steps + 20):
        t0 = time.perf_counter()
        _, _, terminated, truncated, _ = env.step(env.action_space.sample())
        times.append(time.perf_counter() - t0)
        if terminated or truncated:
            env.reset()
    env.close()
    return ms(times[20:])


def start_services(spec: Any, rate_hz: float, ckpt: str, options: dict[str, Any]) -> tuple[Any, Any]:
    replay = ReplayServer.options(**options).remote(spec, config(rate_hz), ckpt)
    ray.get(replay.address.remote())
    store = WeightStore.options(**options).remote()
    ray.get(store.publish.remote(0, {"action": np.zeros(spec.action.shape, np.float32)}))
    return replay, store


def run_local(spec: Any, duration_s: float, rng: random.Random, tmp: str) -> list[dict[str, Any]]:
    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False, logging_level="WARNING",
             runtime_env=RUNTIME_ENV)
    out = []
    try:
        replay, store = start_services(spec, RATES_HZ[0], os.path.join(tmp, "local"), {})
        node = {"scheduling_strategy": NodeAffinitySchedulingStrategy(
            ray.get_runtime_context().get_node_id(), soft=False)}
        for rate in RATES_HZ:
            out.append(session("local", rate, duration_s, replay, store, spec, rng, node))
            print(f"local {rate:g} Hz: executed p50 {out[-1]['executed_ms'].get('p50', float('nan')):.1f} ms",
                  flush=True)
        ray.kill(replay)
        ray.kill(store)
    finally:
        ray.shutdown()
    return out


def run_cluster(spec: Any, duration_s: float, rng: random.Random, tmp: str) -> tuple[list[dict[str, Any]], dict]:
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "resources": {"bench_head": 1}})
    out: list[dict[str, Any]] = []
    info: dict[str, Any] = {}
    try:
        worker = cluster.add_node(num_cpus=2, resources={"teleop_node": 1})
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, log_to_driver=False, logging_level="WARNING", runtime_env=RUNTIME_ENV)
        try:
            info = {"head_node_id": cluster.head_node.node_id, "worker_node_id": worker.node_id,
                    "nodes": len([n for n in ray.nodes() if n["Alive"]])}
            replay, store = start_services(spec, RATES_HZ[0], os.path.join(tmp, "cluster"),
                                           {"resources": {"bench_head": 0.01}})
            for rate in RATES_HZ:
                res = session("cluster", rate, duration_s, replay, store, spec, rng,
                              {"resources": {"teleop_node": 1}})
                if res["actor_node_id"] != worker.node_id or res["actor_node_id"] == res["driver_node_id"]:
                    raise RuntimeError(f"the actor ran on {res['actor_node_id']}, not the second node")
                out.append(res)
                print(f"cluster {rate:g} Hz: executed p50 {res['executed_ms'].get('p50', float('nan')):.1f} ms "
                      f"(endpoint {res['endpoint']})", flush=True)
            ray.kill(replay)
            ray.kill(store)
        finally:
            ray.shutdown()
    finally:
        cluster.shutdown()
    return out, info


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    os.environ.setdefault("MUJOCO_GL", "egl")
    # Ray instances of this script only, on this machine; one auth mode for both (a driver that started a
    # token-auth instance could not schedule on the cluster started next without tokens).
    os.environ["RAY_AUTH_MODE"] = "disabled"
    duration_s = 6.0 if args.quick else 20.0
    rng = random.Random(0)
    spec = transition_spec(config(RATES_HZ[0]).env)
    step_ms = env_step_ms(300 if args.quick else 1000)
    print(f"{ENV_ID} env.step in-process: p50 {step_ms['p50']:.2f} ms, p99 {step_ms['p99']:.2f} ms", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench_teleop_") as tmp:
        sessions = run_local(spec, duration_s, rng, tmp)
        cluster_sessions, cluster_info = run_cluster(spec, duration_s, rng, tmp)
    sessions += cluster_sessions

    results: dict[str, Any] = {"cluster": cluster_info, "env_step_in_process_ms": step_ms}
    ratios: dict[str, Any] = {}
    rows = []
    for s in sessions:
        key = f"{s['path']}, {s['actor_rate_hz']:g} Hz"
        results[key] = s
        e, a, c, period = s["executed_ms"], s["arrival_ms"], s["client_ms"], s["period_ms"]
        if not e["n"]:
            raise RuntimeError(f"{key}: no executed-latency samples")
        ratios[f"{key}: executed p50 / period"] = e["p50"] / period
        ratios[f"{key}: executed p99 / period"] = e["p99"] / period
        if s["actor_rate_hz"] == 5.0:
            ratios[f"{key}: executed p99 / 200 ms robot step budget"] = e["p99"] / 200.0
        rows.append([s["path"], s["actor_rate_hz"], e["n"], e["p50"], e["p99"], e["max"], a["p50"], a["p99"],
                     c.get("p50", float("nan")), c.get("p99", float("nan")), period, e["p50"] / period,
                     e["p99"] / period, s["actor_steps_per_s"]])
    print_table(f"Teleop latency, device event -> executed action ({duration_s:g} s per variant; ms)",
                ["path", "Hz", "events", "p50", "p99", "max", "arrive p50", "arrive p99", "client p50",
                 "client p99", "period", "p50/period", "p99/period", "steps/s"], rows)
    save("bench_teleop", args,
         params={"env": ENV_ID, "env_kwargs": {"privileged": False, "terminate_on_success": False},
                 "episode_steps": "the task's (60)", "client_hz": CLIENT_HZ, "event_every_s": EVENT_EVERY_S,
                 "event_jitter_s": EVENT_JITTER_S, "duration_s_per_variant": duration_s,
                 "actor_rates_hz": list(RATES_HZ), "policy": "constant (zeros), published to a WeightStore first",
                 "replay": "ReplayServer, min_size 64, updates_per_step 0.001, rate_tolerance_steps 1e6",
                 "local_ray_init": "num_cpus=4; actor pinned to the driver's node",
                 "cluster": "cluster_utils.Cluster on this machine: head num_cpus=2, one node num_cpus=2 with "
                            "resource teleop_node; actor placed by resources={teleop_node: 1}",
                 "teleop": {"bind": "0.0.0.0", "timeout_s": 0.5,
                            "address": "the actor's advertised stats()['teleop']"}},
         results=results, ratios=ratios,
         notes=["executed = time.time() when env.step returned with the event's action - the event time (actor)",
                "arrival = time.time() when the command reached the actor's endpoint - the event time; includes the "
                "client's 50 Hz sampling (an event waits up to 20 ms to be read) and the socket",
                "client = the executed figure computed by TeleopClient from the actor's acks (applied_at)",
                "each figure once per device event; the event time is the device state's scheduled change time",
                "baseline = the actor's control period (a command waits on average half a period for the next "
                "step, at most one)",
                "both cluster nodes are on this machine: the network is loopback"])


if __name__ == "__main__":
    main()
