"""``RUN_DIR/status.json``: the live state of a run's fleet, rewritten every logging interval for
``fleetrl status`` (see :mod:`fleetrl.status_view` for the schema as read)."""

from __future__ import annotations

import json
import os
import pathlib
import time
from typing import Any

from fleetrl.distributed.supervisor import Fleet

STATUS_FILE = "status.json"


class StatusReporter:
    """Builds the status document from the fleet's stats, with rates over the last interval, and writes it."""

    def __init__(self, fleet: Fleet, run_dir: pathlib.Path):
        self.fleet, self.path = fleet, pathlib.Path(run_dir) / STATUS_FILE
        self.started_at = time.time()
        self._prev: dict[str, tuple[float, float]] = {}  # key -> (time, counter)
        self._last: dict[str, Any] | None = None

    def _rate(self, key: str, value: float | None, now: float) -> float | None:
        if value is None:
            return None
        prev = self._prev.get(key)
        self._prev[key] = (now, value)
        if prev is None or now <= prev[0] or value < prev[1]:  # first sight, or the counter restarted
            return None
        return (value - prev[1]) / (now - prev[0])

    def document(self, row: dict[str, Any], state: str) -> dict[str, Any]:
        fleet, cfg, now = self.fleet, self.fleet.cfg, time.time()
        learner = (fleet.learner.stats if fleet.learner else None) or {}
        learner_steps = learner.get("learner_steps")
        actors = []
        for actor_id, slot in fleet.actors.items():
            st = slot.stats or {}
            episodes = list(slot.recent)
            steps = sum(e["length"] for e in episodes)
            actors.append({
                "id": actor_id, "kind": "robot" if slot.robot else "sim", "name": slot.name,
                "node": st.get("node"), "node_id": st.get("node_id"),
                "health": slot.health,
                "restarts": slot.restarts, "env_steps": st.get("env_steps"),
                "env_steps_per_s": self._rate(f"actor{actor_id}/{slot.restarts}", st.get("env_steps"), now),
                "policy_version": st.get("policy_version_in_use", st.get("policy_version")),
                # Of the policy acting now (a robot keeps its episode's policy until the episode ends).
                "policy_lag": (learner_steps - st.get("policy_version_in_use", st["policy_version"]))
                if learner_steps is not None and st.get("policy_version_in_use", st.get("policy_version", -1)) >= 0
                else None,
                "episodes": st.get("episodes_written"),
                "intervention_rate": (sum(e.get("interventions", 0) for e in episodes) / steps) if steps else None,
                "interventions": sum(e.get("interventions", 0) for e in episodes),
                "teleop": st.get("teleop"), "controlled": st.get("controlled"),
                "success_rate": (sum(e["success"] for e in episodes) / len(episodes)) if episodes else None,
                "episode_return": (sum(e["ret"] for e in episodes) / len(episodes)) if episodes else None,
            })
        replay = fleet.replay_slot.stats or {}
        tables = []
        for t in replay.get("tables", []):
            key = f"{replay.get('incarnation')}/{t['name']}"
            tables.append({"name": t["name"], "size": t["size"], "max_size": t["max_size"],
                           "inserts_per_s": self._rate(key + "/in", t["inserts"], now),
                           "samples_per_s": self._rate(key + "/out", t["samples"], now),
                           "rate_limiter": t["rate_limiter"]})
        learner_ckpt = learner.get("last_checkpoint")
        return {
            "version": 1, "run": self.path.parent.name, "run_dir": str(self.path.parent.resolve()),
            "updated_at": now, "started_at": self.started_at, "interval_s": cfg.logging.interval_s, "state": state,
            "env_steps": row.get("env_steps"), "total_env_steps": cfg.total_env_steps,
            "actors": actors,
            "replay": {"node": replay.get("node"), "node_id": replay.get("node_id"), "health": fleet.replay_slot.health,
                       "restarts": fleet.replay_slot.restarts, "address": replay.get("address"),
                       "lost_items": fleet.lost_items, "last_checkpoint": replay.get("last_checkpoint"),
                       "tables": tables},
            "learner": {"node": learner.get("node"), "node_id": learner.get("node_id"), "device": learner.get("device"),
                        "health": fleet.learner.health if fleet.learner else None,
                        "restarts": fleet.learner.restarts if fleet.learner else 0,
                        "learner_steps": learner_steps, "updates_per_s": row.get("updates_per_s"),
                        "utd_ratio": row.get("utd_ratio"), "utd_target": cfg.replay.updates_per_step,
                        "policy_version": learner.get("policy_version"), "last_checkpoint": learner_ckpt},
            "events": fleet.events[-20:],
        }

    def write(self, row: dict[str, Any], state: str = "running") -> None:
        """Atomically replace ``status.json`` (a reader never sees half a file)."""
        if state != "running" and self._last is not None:  # the final word: the last rates, the end state
            doc = {**self._last, "state": state, "updated_at": time.time(), "events": self.fleet.events[-20:]}
        else:
            doc = self.document(row, state)
        self._last = doc
        tmp = self.path.with_name(f".{STATUS_FILE}.tmp")
        tmp.write_text(json.dumps(doc, default=str))
        os.replace(tmp, self.path)
