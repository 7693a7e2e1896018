"""The fleet of a run and what keeps it going: start every process where the config places it, watch them, and
restart what dies.

- A sim actor that dies is replaced by a new one with the same id (a new seed and episode-id range); the episode it
  was collecting is lost whole, because items are created only after an episode ends.
- A learner that dies is replaced by one loaded from the newest learner checkpoint of the run; it publishes under
  a new epoch, so actors take its weights although its step count went back. Actors keep collecting meanwhile.
- The replay server is restarted by Ray itself (``max_restarts``) on its pinned node, restoring its Reverb
  checkpoint; writers and the learner find the new address through its handle. The supervisor notices the new
  incarnation and counts the items the crash lost: those the actors created for the dead incarnation minus those
  its newest checkpoint held.
- A robot actor is restarted like a sim actor, but one that has used up its restarts is retired (the robot leaves
  the run, which goes on with the rest). Robots also join and leave a running fleet (:meth:`Fleet.attach`,
  :meth:`Fleet.detach`).
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import os
import pathlib
import secrets
import time
import uuid
from typing import Any

import ray

from fleetrl.checkpoint import CheckpointError, load_checkpoint
from fleetrl.datasets.episode import DatasetError
from fleetrl.distributed import placement
from fleetrl.distributed.learner_worker import LearnerWorker
from fleetrl.distributed.replay_server import ReplayServer
from fleetrl.distributed.sim_actor import SimActor
from fleetrl.distributed.weights import WeightStore, policy_factory_default
from fleetrl.runs import RunPlan
from fleetrl.types import TransitionSpec

log = logging.getLogger(__name__)
TELEOP_TOKEN_FILE = "teleop_token"


def teleop_token(run_dir: pathlib.Path) -> str:
    """The run's teleop token, in ``RUN_DIR/teleop_token`` (readable by its owner only; kept across resumes): whoever
    can read the run directory may take over its actors."""
    path = pathlib.Path(run_dir) / TELEOP_TOKEN_FILE
    if path.is_file():
        return path.read_text().strip()
    token = secrets.token_hex(16)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(token + "\n")
    return token
#: How long one round waits for stats; a process still starting (a restarted actor loading its env) or busy is
#: shown as not answering this round instead of holding up the driver.
_STATS_TIMEOUT_S = 10.0


@dataclasses.dataclass
class Slot:
    """One supervised process: its handle, its running ``run`` call, its health and restarts."""

    name: str
    handle: Any
    run_ref: Any = None
    restarts: int = 0
    health: str = "ok"
    stats: dict[str, Any] | None = None
    down_since: float | None = None  # wall time its failure was noticed, until it answers again
    recent: collections.deque = dataclasses.field(default_factory=lambda: collections.deque(maxlen=20))
    """The last episodes it finished (actors)."""
    retired_items: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    """Items its dead predecessors created per replay incarnation, as last reported (actors)."""
    actor_id: int = -1
    robot: Any = None
    """``RobotConfig`` of a robot actor (None for sim actors and the learner)."""
    detaching: dict[str, Any] | None = None
    """The detach command being carried out (the actor finishes its episode and flushes, then leaves)."""


class Fleet:
    """Replay server, weight store, learner and sim actors of one run, with their restarts and failure events."""

    def __init__(self, plan: RunPlan, spec: TransitionSpec):
        self.plan, self.cfg, self.spec = plan, plan.cfg, spec
        self.launch_id = uuid.uuid4().hex[:12]
        self.events: list[dict[str, Any]] = []
        self.replay: Any = None
        self.store: Any = None
        self.learner: Slot | None = None
        self.actors: dict[int, Slot] = {}
        self.retired: list[Slot] = []  # actors that left (detached robots, robots given up on)
        self.detached: list[tuple[dict[str, Any], dict[str, Any]]] = []  # (detach command, result) to answer
        self.replay_slot = Slot("replay", None)
        self.offline: dict[str, Any] | None = None
        self._incarnations: dict[str, dict[str, Any]] = {}  # replay incarnation -> its endpoint and base count
        self._pending_loss: dict[str, Any] | None = None
        self._replay_seen_at = time.time()
        self.lost_items = 0
        self._events_file = pathlib.Path(plan.run_dir) / "events.jsonl"

    # ---- start ---------------------------------------------------------------------------------------------
    def start(self) -> None:
        cfg = self.cfg
        self.use_gpu = cfg.learner.device != "cpu" and ray.cluster_resources().get("GPU", 0) >= 1
        self.node = placement.choose_learner_node(cfg, self.use_gpu)
        warning = placement.sim_actors_unplaceable(cfg)
        if warning:
            log.warning(warning)
        # Ray restarts the replay in place (same node, same checkpoint directory); a call in flight when it died
        # fails, later calls wait for the new incarnation.
        self.replay = ReplayServer.options(**placement.pinned(self.node), max_restarts=cfg.recovery.max_restarts,
                                           max_task_retries=0).remote(
            self.spec, cfg, str(self.plan.run_dir / "replay"), self.launch_id)
        self.replay_slot.handle = self.replay
        try:
            endpoint = ray.get(self.replay.endpoint.remote())
        except DatasetError as exc:  # the offline loader refused a dataset: the message names episode and key
            raise DatasetError(str(getattr(exc, "cause", exc))) from None
        self._incarnations[endpoint["incarnation"]] = {"base": 0, **endpoint}
        self.replay_incarnation = endpoint["incarnation"]
        self.offline = ray.get(self.replay.offline_summary.remote())
        if self.offline is not None:
            log.warning("offline table: %s",
                        {k: v for k, v in self.offline.items() if k not in ("datasets", "obs_stats")})
        self.teleop_token = teleop_token(self.plan.run_dir)
        self.store = WeightStore.options(**placement.pinned(self.node)).remote()
        self.learner = Slot("learner", None)
        self._start_learner(epoch=0)
        self.factory = policy_factory_default(self.spec, cfg.learner)
        for i in range(cfg.actors.num_sim):
            self.actors[i] = Slot(f"actor {i}", None, actor_id=i)
            self._start_actor(i)
        # Robot actors take the ids after the sim actors'; each is placed on its robot's node.
        for j, robot in enumerate(cfg.robots):
            i = cfg.actors.num_sim + j
            self.actors[i] = Slot(f"robot {robot.name}", None, actor_id=i, robot=robot)
            self._start_actor(i)

    def _start_learner(self, epoch: int) -> None:
        plan, slot = self.plan, self.learner
        assert slot is not None
        init_state, steps = plan.init_state, plan.counters.get("learner_steps", 0)
        if epoch > 0:  # restarted: from the newest checkpoint this run wrote, if any
            try:
                ckpt = load_checkpoint(plan.run_dir)
                init_state, steps = ckpt["algorithm"], int(ckpt["meta"]["learner_steps"])
            except CheckpointError:
                log.warning("learner restart: no checkpoint in %s yet; starting from the run's initial state",
                            plan.run_dir)
        # env_steps stays this launch's base: the replay counts inserts from the launch, across its restarts.
        counters = {**plan.counters, "learner_steps": steps}
        handle = LearnerWorker.options(**placement.learner_options(self.cfg, self.node, self.use_gpu)).remote(
            self.cfg, self.spec, self.replay, self.store, str(plan.run_dir), counters, init_state,
            (self.offline or {}).get("obs_stats"), epoch)
        slot.handle, slot.run_ref = handle, handle.run.remote()

    def _start_actor(self, actor_id: int) -> None:
        slot = self.actors[actor_id]
        resumed = self.plan.init_state is not None
        options = placement.robot_actor_options(slot.robot) if slot.robot else placement.sim_actor_options(self.cfg)
        handle = SimActor.options(**options).remote(
            actor_id, self.cfg, self.spec, self.replay, self.store, self.factory,
            self.plan.counters.get("generation", 0), resumed, slot.restarts, slot.robot, self.teleop_token)
        # A resumed, --init-from or restarted actor has no random warm-up: its first step waits (up to 60 s) for the
        # learner's weights instead of acting at random until they arrive (on a robot, too).
        wait = 0 if resumed or slot.restarts else None
        slot.handle, slot.run_ref = handle, handle.run.remote(wait_for_version=wait)

    # ---- watch ---------------------------------------------------------------------------------------------
    def slots(self) -> list[Slot]:
        return [s for s in [self.learner, *self.actors.values()] if s is not None]

    def check(self) -> None:
        """Restart every process whose ``run`` ended; raises when one has used up ``recovery.max_restarts``."""
        for slot in self.slots():
            if slot.run_ref is None:
                continue
            done, _ = ray.wait([slot.run_ref], timeout=0)
            if not done:
                continue
            final = None
            try:
                final = ray.get(slot.run_ref)
                error = "returned before it was asked to stop"
            except Exception as exc:  # noqa: BLE001 - any failure of a worker is handled the same way: restart
                error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]
            if slot.detaching is not None:
                self._detached(slot, final, None if final is not None else error)
            else:
                self._restart(slot, error)

    def _restart(self, slot: Slot, error: str) -> None:
        if slot.robot is not None and slot.restarts >= self.cfg.recovery.max_restarts:
            # One robot's trouble (a server that stays down, a wrong token) must not end everyone's run.
            log.error("%s failed %d times; it leaves the run (last error: %s)", slot.name, slot.restarts + 1, error)
            self._retire(slot)
            self._event(slot.name, error, "gave up: the robot left the run")
            return
        if slot.restarts >= self.cfg.recovery.max_restarts:
            raise RuntimeError(f"{slot.name} failed {slot.restarts + 1} times (recovery.max_restarts="
                               f"{self.cfg.recovery.max_restarts}); last error: {error}")
        log.warning("%s died (%s); restarting it", slot.name, error)
        try:
            ray.kill(slot.handle, no_restart=True)  # a hung-but-alive process must not keep writing
        except Exception:  # noqa: BLE001 - already gone
            pass
        slot.restarts += 1
        slot.health, slot.down_since = "restarting", time.time()
        if slot.stats is not None:  # what the dead one wrote stays part of the replay's history
            slot.retired_items.update(slot.stats.get("items_by_replay", {}))
            slot.stats = None
        self._event(slot.name, error, "restarted")
        if slot is self.learner:
            self._start_learner(epoch=slot.restarts)
        else:
            self._start_actor(slot.actor_id)

    def poll(self) -> dict[str, Any]:
        """Stats of every process (the last known for one that does not answer) and the replay's."""
        refs = {id(s): s.handle.stats.remote() for s in self.slots()}
        replay_ref = self.replay.stats.remote()
        ray.wait([*refs.values(), replay_ref], num_returns=len(refs) + 1, timeout=_STATS_TIMEOUT_S)
        for slot in self.slots():
            fresh = self._get(refs[id(slot)])
            if fresh is not None:
                if slot.down_since is not None and self._recovered(slot, fresh):
                    self._recovery_done(slot.name, time.time() - slot.down_since)
                    slot.down_since = None
                if slot.down_since is None:
                    slot.health = "ok"
                slot.stats = fresh
                slot.recent.extend(fresh.get("episodes", []))
            else:
                if slot.stats is not None:  # its last answer stands, but its episodes were counted then
                    slot.stats = {**slot.stats, "episodes": []}
                if slot.health == "ok":
                    slot.health = "unresponsive"
        replay = self._get(replay_ref)
        if replay is None:
            if self.replay_slot.down_since is None:
                self.replay_slot.down_since = time.time()
            self.replay_slot.health = "restarting"
        else:
            self._watch_replay(replay)
            self.replay_slot.stats = replay
        self._settle_loss()
        return {"actors": [s.stats for s in self.actors.values() if s.stats is not None],
                "learner": self.learner.stats if self.learner else None, "replay": self.replay_slot.stats}

    @staticmethod
    def _get(ref: Any) -> dict[str, Any] | None:
        ready, _ = ray.wait([ref], timeout=0)
        if not ready:  # slow to answer: shown as unresponsive this round
            return None
        try:
            return ray.get(ref)
        except Exception:  # noqa: BLE001 - dead or restarting: check() handles it
            return None

    @staticmethod
    def _recovered(slot: Slot, stats: dict[str, Any]) -> bool:
        """A restarted actor counts as back once it has stepped, a learner once it has published."""
        if "env_steps" in stats:
            return stats["env_steps"] > 0
        return stats.get("policy_version", -1) >= 0

    def _watch_replay(self, stats: dict[str, Any]) -> None:
        inc = stats["incarnation"]
        slot = self.replay_slot
        if inc != self.replay_incarnation:
            old = self.replay_incarnation
            endpoint = ray.get(self.replay.endpoint.remote())
            restored = endpoint.get("restored_from") or {}
            self._incarnations[inc] = {"base": int(restored.get("inserts", 0)), **endpoint}
            self.replay_incarnation = inc
            slot.restarts += 1
            # Down since it was noticed, or at the latest since it last answered (an upper bound on the outage).
            down = slot.down_since or self._replay_seen_at
            self._event("replay", "process died", "restarted by Ray from its Reverb checkpoint",
                        recovery_s=endpoint["ready_at"] - down)
            self._pending_loss = {"old": old, "new": inc, "since": time.time()}
        slot.health, slot.down_since = "ok", None
        self._replay_seen_at = time.time()

    def _settle_loss(self) -> None:
        """Once every actor writes to the new replay incarnation, count what the crash lost."""
        pending = self._pending_loss
        if pending is None:
            return
        live = [s for s in self.actors.values() if s.stats is not None and s.health == "ok"]
        moved = all(s.stats["replay_incarnation"] == pending["new"] for s in live)
        if not moved and time.time() - pending["since"] < 120:
            return
        old, new = self._incarnations[pending["old"]], self._incarnations[pending["new"]]
        # Items every actor (and its dead predecessors) created for the dead incarnation: inserted or in flight.
        created = sum(s.stats["items_by_replay"].get(pending["old"], 0) + s.retired_items[pending["old"]]
                      for s in [*self.actors.values(), *self.retired] if s.stats is not None)
        lost = max(0, old["base"] + created - new["base"])
        self._pending_loss = None
        self.lost_items += lost
        self._event("replay", f"items lost since its last checkpoint: {lost}" + ("" if moved else " (lower bound)"),
                    "counted", lost_items=lost)

    # ---- robots joining and leaving -------------------------------------------------------------------------
    def robot_slot(self, name: str) -> Slot | None:
        return next((s for s in self.actors.values() if s.robot is not None and s.robot.name == name), None)

    def attach(self, robot: Any) -> Slot:
        """Start a robot actor for ``robot`` (a ``RobotConfig``) in the running fleet; nothing else restarts.
        Raises ValueError naming what is wrong (a name in use, no node for its resource, another observation
        schema than the run's)."""
        from fleetrl.envs.robot_client import robot_transition_spec

        if self.robot_slot(robot.name) is not None:
            raise ValueError(f"robot {robot.name!r} is already part of this run (detach it first)")
        problem = placement.robot_unplaceable(robot)
        if problem:
            raise ValueError(problem)
        got = robot_transition_spec(robot)
        if got != self.spec:
            raise ValueError(f"robot {robot.name!r}: its observations {got} differ from the run's {self.spec} "
                             "(check image and image_size)")
        actor_id = 1 + max([*self.actors, *(s.actor_id for s in self.retired)], default=-1)
        slot = Slot(f"robot {robot.name}", None, actor_id=actor_id, robot=robot)
        self.actors[actor_id] = slot
        self._start_actor(actor_id)
        self._event(slot.name, f"attached (actor {actor_id}, server {robot.server})", "attached")
        return slot

    def detach(self, name: str, command: dict[str, Any], now: bool = False) -> Slot:
        """Ask robot ``name``'s actor to leave: finish (or with ``now`` abort) its episode, flush what it queued,
        end. :meth:`check` completes it; the result lands in :attr:`detached`."""
        slot = self.robot_slot(name)
        if slot is None:
            names = sorted(s.robot.name for s in self.actors.values() if s.robot is not None)
            raise ValueError(f"robot {name!r} is not part of this run (robots now: {names or 'none'})")
        if slot.detaching is not None:
            raise ValueError(f"robot {name!r} is already detaching")
        slot.detaching = command
        slot.handle.finish.remote(now)
        self._event(slot.name, "detach requested" + (" (episode aborted)" if now else ""), "detaching")
        return slot

    def _detached(self, slot: Slot, final: dict[str, Any] | None, error: str | None) -> None:
        assert slot.detaching is not None
        if final is not None:
            slot.stats = final
        self._retire(slot)
        st = slot.stats or {}
        result = {"robot": slot.robot.name, "actor_id": slot.actor_id, "error": error,
                  **{k: st.get(k) for k in ("episodes_written", "steps_written", "episodes_lost", "pending_episodes",
                                            "env_steps")}}
        self.detached.append((slot.detaching, result))
        self._event(slot.name, "detached" + (f" ({error})" if error else ""), "detached")

    def label(self, name: str, outcome: str) -> None:
        """A person's success / failure label for robot ``name``'s episode in progress."""
        slot = self.robot_slot(name)
        if slot is None:
            raise ValueError(f"robot {name!r} is not part of this run")
        ray.get(slot.handle.label.remote(outcome), timeout=10)

    def _retire(self, slot: Slot) -> None:
        try:
            ray.kill(slot.handle, no_restart=True)
        except Exception:  # noqa: BLE001 - already gone
            pass
        slot.run_ref, slot.health = None, "left"
        self.actors.pop(slot.actor_id, None)
        self.retired.append(slot)

    # ---- events --------------------------------------------------------------------------------------------
    def _event(self, component: str, what: str, action: str, **extra: Any) -> None:
        event = {"time": time.time(), "component": component, "what": what, "action": action,
                 "recovery_s": None, "lost_items": None, **extra}
        self.events.append(event)
        with self._events_file.open("a") as fh:
            fh.write(json.dumps(event) + "\n")

    def _recovery_done(self, component: str, seconds: float) -> None:
        for event in reversed(self.events):
            if event["component"] == component and event["recovery_s"] is None:
                event["recovery_s"] = seconds
                break
        log.warning("%s recovered after %.1f s", component, seconds)
        self._event(component, "answering again", "recovered", recovery_s=seconds)

    # ---- stop ----------------------------------------------------------------------------------------------
    def stop(self) -> dict[str, Any]:
        """Actors first (they may be blocked on the rate limiter), then the learner, whose run ends in a
        checkpoint; returns the learner's final stats."""
        for slot in self.actors.values():
            slot.handle.stop.remote()
        runs = [s.run_ref for s in self.actors.values() if s.run_ref is not None]
        ray.wait(runs, num_returns=len(runs), timeout=60)
        for slot in self.actors.values():
            slot.run_ref = None
        assert self.learner is not None
        self.learner.handle.stop.remote()
        final = ray.get(self.learner.run_ref, timeout=600)
        self.learner.run_ref = None
        return final

    def shutdown(self) -> None:
        """Best-effort teardown after success or failure: a final checkpoint if the learner still runs, then kill."""
        if self.learner is not None and self.learner.run_ref is not None:
            try:
                self.stop()
            except Exception:  # noqa: BLE001 - teardown continues; the original error is what the user sees
                log.exception("could not stop the workers cleanly")
        if self.replay is not None:
            try:
                ray.get(self.replay.stop.remote(), timeout=30)
            except Exception:  # noqa: BLE001
                log.exception("could not stop the replay server cleanly")
        for h in [*(s.handle for s in self.slots()), self.store, self.replay]:
            if h is not None:
                ray.kill(h, no_restart=True)

    def pids(self) -> dict[str, int]:
        """Process ids of the replay, the learner and every actor (for fault-injection tests and benchmarks)."""
        out = {"replay": ray.get(self.replay.pid.remote())}
        for slot in self.slots():
            out[slot.name] = ray.get(slot.handle.pid.remote())
        return out

