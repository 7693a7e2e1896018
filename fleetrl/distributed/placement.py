"""Placement from config: which Ray node runs the learner (and the replay beside it), where sim actors go.

The learner's node is chosen once by the driver, among the live nodes that offer ``placement.learner``'s custom
resources and labels (and a GPU when the learner uses one); the replay server, the weight store and the learner are
then pinned to it with a hard node affinity, so the learner samples from Reverb over loopback. Sim actors carry
``placement.sim_actors``' resources and label selector and are spread by Ray over the nodes that match.
"""

from __future__ import annotations

import time
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from fleetrl.config import ConfigError, NodeSelector, TrainConfig


def node_matches(node: dict[str, Any], selector: NodeSelector, need_gpu: bool = False) -> bool:
    """Whether a ``ray.nodes()`` entry is alive and offers the selector's resources, labels and (maybe) a GPU."""
    if not node.get("Alive"):
        return False
    total = node.get("Resources", {})
    labels = node.get("Labels", {}) or {}
    if need_gpu and total.get("GPU", 0) < 1:
        return False
    return (all(total.get(k, 0) >= v for k, v in selector.resources.items())
            and all(labels.get(k) == v for k, v in selector.labels.items()))


def _describe(nodes: list[dict[str, Any]]) -> str:
    parts = []
    for n in nodes:
        if not n.get("Alive"):
            continue
        res = {k: v for k, v in n.get("Resources", {}).items()
               if not k.startswith("node:") and k not in ("memory", "object_store_memory")}
        labels = {k: v for k, v in (n.get("Labels") or {}).items() if not k.startswith("ray.io/")}
        parts.append(f"{n.get('NodeManagerAddress')} resources={res}" + (f" labels={labels}" if labels else ""))
    return "; ".join(parts) or "none alive"


def choose_learner_node(cfg: TrainConfig, use_gpu: bool, prefer: str | None = None) -> str:
    """Node id for the learner, the replay server and the weight store.

    Waits up to ``placement.wait_for_nodes_s`` for a matching node (an autoscaler may be starting it). ``prefer``
    (a node id, e.g. the replay's when the learner restarts) wins when it still matches; otherwise the driver's own
    node, then the first match. Raises :class:`ConfigError` naming ``placement.learner`` and the nodes seen."""
    selector = cfg.placement.learner
    deadline = time.monotonic() + cfg.placement.wait_for_nodes_s
    here = ray.get_runtime_context().get_node_id()
    while True:
        nodes = ray.nodes()
        matching = [n["NodeID"] for n in nodes if node_matches(n, selector, use_gpu)]
        for candidate in (prefer, here):
            if candidate in matching:
                return candidate
        if matching:
            return matching[0]
        if time.monotonic() >= deadline:
            need = dict(selector.resources, **({"GPU": 1} if use_gpu else {}))
            raise ConfigError(
                f"placement.learner: no live Ray node offers resources {need}"
                + (f" and labels {dict(selector.labels)}" if selector.labels else "")
                + f" (waited {cfg.placement.wait_for_nodes_s:.0f} s; nodes: {_describe(nodes)})")
        time.sleep(1.0)


def pinned(node_id: str) -> dict[str, Any]:
    """Ray options that keep an actor on ``node_id`` (and only there, also when Ray restarts it)."""
    return {"scheduling_strategy": NodeAffinitySchedulingStrategy(node_id=node_id, soft=False)}


def learner_options(cfg: TrainConfig, node_id: str, use_gpu: bool) -> dict[str, Any]:
    """Options for the learner: its node, its GPU, the custom resources named in ``placement.learner``."""
    return {**pinned(node_id), "num_gpus": 1 if use_gpu else 0, "resources": dict(cfg.placement.learner.resources)}


def sim_actor_options(cfg: TrainConfig) -> dict[str, Any]:
    """Options for a sim actor: ``placement.sim_actors``' resources and labels, spread over the nodes."""
    selector = cfg.placement.sim_actors
    opts: dict[str, Any] = {"resources": dict(selector.resources),
                            "scheduling_strategy": "SPREAD" if cfg.placement.spread_sim_actors else "DEFAULT"}
    if selector.labels:
        opts["label_selector"] = dict(selector.labels)
    return opts


def robot_actor_options(robot: Any) -> dict[str, Any]:
    """Options for a robot actor: one unit of its robot's custom resource and its node labels (the node wired to
    the robot), where named."""
    opts: dict[str, Any] = {"num_cpus": 1, "resources": {robot.resource: 1} if robot.resource else {}}
    if robot.labels:
        opts["label_selector"] = dict(robot.labels)
    return opts


def sim_actors_unplaceable(cfg: TrainConfig) -> str | None:
    """A warning when no live node matches ``placement.sim_actors`` now (the actors then wait for an autoscaler to
    start one, or forever on a fixed cluster); None when one does."""
    if cfg.actors.num_sim == 0:
        return None
    nodes = ray.nodes()
    if any(node_matches(n, cfg.placement.sim_actors) for n in nodes):
        return None
    selector = cfg.placement.sim_actors
    return (f"placement.sim_actors: no live Ray node offers resources {dict(selector.resources)}"
            + (f" and labels {dict(selector.labels)}" if selector.labels else "")
            + f"; sim actors wait until one joins (nodes now: {_describe(nodes)})")


def robot_unplaceable(robot: Any) -> str | None:
    """Why no live node can take ``robot``'s actor now (its resource or labels), or None if one can."""
    selector = NodeSelector(resources={robot.resource: 1.0} if robot.resource else {}, labels=dict(robot.labels))
    nodes = ray.nodes()
    if any(node_matches(n, selector) for n in nodes):
        return None
    return (f"robot {robot.name!r}: no live Ray node offers "
            + (f"resource {robot.resource!r}" if robot.resource else "")
            + (" and " if robot.resource and robot.labels else "")
            + (f"labels {dict(robot.labels)}" if robot.labels else "")
            + " (start the robot's machine with `ray start --address HEAD:6379 --resources "
              f"'{{\"{robot.resource or robot.name}\": 1}}'`, or leave the resource out on a one-machine run; "
            + f"nodes now: {_describe(nodes)})")
