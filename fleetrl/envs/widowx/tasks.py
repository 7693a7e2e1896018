"""Bridge-style tabletop tasks: what is on the table, how it is placed, when the task is done, and a dense shaping.

Every task has a sparse success signal (reward 1 on a success step, else 0) and an optional dense reward in
[0, 1] that equals 1 exactly on success. Success criteria follow SimplerEnv's scoring of Bridge tasks (an object
counts as placed when its centre is within the target's half xy-extent + 3 mm and its bottom 0-2 cm above the
target's top, touching neither the table nor the fingers) unless the task says otherwise. Placements are drawn
from the env's seeded generator at every reset.

The privileged ``object`` observation is, for each object in order, its position (3) and quaternion (w, x, y, z),
then for each goal marker its position (3).
"""

from __future__ import annotations

import numpy as np

from fleetrl.envs.widowx.scene import TABLE_Z, MarkerSpec, ObjectSpec
from fleetrl.envs.widowx.sim import TabletopSim

#: Where objects are placed: in front of the arm, well inside the workspace box.
PLACE_LOW = np.array([0.2, -0.1])
PLACE_HIGH = np.array([0.36, 0.14])
BLOCK = (0.02, 0.02, 0.02)
GREEN, YELLOW, RED, WHITE = (0.15, 0.65, 0.2, 1), (0.9, 0.8, 0.15, 1), (0.8, 0.15, 0.1, 1), (0.92, 0.92, 0.9, 1)
PLACE_TOLERANCE = 0.003
"""Extra xy slack (m) beyond the target's half extent, as SimplerEnv scores it."""


def _closeness(distance: float, scale: float = 10.0) -> float:
    """1 at distance 0, falling towards 0 (robosuite-style 1 - tanh shaping)."""
    return float(1.0 - np.tanh(scale * distance))


def _spread_xy(rng: np.random.Generator, n: int, min_dist: float) -> list[np.ndarray]:
    """``n`` table positions at least ``min_dist`` apart (rejection sampling)."""
    while True:
        pts = [rng.uniform(PLACE_LOW, PLACE_HIGH) for _ in range(n)]
        if all(np.linalg.norm(a - b) >= min_dist for i, a in enumerate(pts) for b in pts[i + 1:]):
            return pts


class Task:
    """One tabletop task."""

    name: str = ""
    episode_steps: int = 60
    objects: tuple[ObjectSpec, ...] = ()
    markers: tuple[MarkerSpec, ...] = ()
    success_doc: str = ""

    @property
    def object_dim(self) -> int:
        return 7 * len(self.objects) + 3 * len(self.markers)

    def reset(self, sim: TabletopSim, rng: np.random.Generator) -> None:
        raise NotImplementedError

    def success(self, sim: TabletopSim) -> bool:
        raise NotImplementedError

    def shaped_reward(self, sim: TabletopSim) -> float:
        raise NotImplementedError

    def object_obs(self, sim: TabletopSim) -> np.ndarray:
        parts = [np.concatenate([sim.obj_pos(o.name), sim.obj_quat(o.name)]) for o in self.objects]
        parts += [sim.marker_pos(m.name) for m in self.markers]
        return np.concatenate(parts).astype(np.float32)

    # Shared pieces of pick-and-place shaping.
    def _pick_shaping(self, sim: TabletopSim, obj: str) -> float:
        """Reach (0-0.25) + grasp (0.25) + lift up to 5 cm (0-0.25): at most 0.75."""
        reach = 0.25 * _closeness(float(np.linalg.norm(sim.tcp_pos - sim.obj_pos(obj))))
        grasp = 0.25 if sim.grasped(obj) else 0.0
        lift = 0.25 * float(np.clip((sim.bottom_z(obj) - TABLE_Z) / 0.05, 0.0, 1.0)) if grasp else 0.0
        return reach + grasp + lift

    def _place_shaping(self, sim: TabletopSim, obj: str, target: str) -> float:
        """Pick shaping until the object is held (< 0.75), then 0.75 + 0.2 x closeness of object to target (xy)."""
        pick = self._pick_shaping(sim, obj)
        if pick < 0.5:  # not grasped yet
            return pick
        xy = float(np.linalg.norm(sim.obj_pos(obj)[:2] - sim.obj_pos(target)[:2]))
        return 0.75 + 0.2 * _closeness(xy)

    def _placed_on(self, sim: TabletopSim, obj: str, target: str, target_half_xy: float, target_top: float) -> bool:
        xy = float(np.linalg.norm(sim.obj_pos(obj)[:2] - sim.obj_pos(target)[:2]))
        gap = sim.bottom_z(obj) - target_top
        return (xy <= target_half_xy + PLACE_TOLERANCE and -PLACE_TOLERANCE <= gap <= 0.02
                and not sim.touching(obj, "table") and not sim.touching_fingers(obj))


class Reach(Task):
    name, episode_steps = "reach", 60
    markers = (MarkerSpec("target", "sphere", 0.015, (0.9, 0.2, 0.2, 0.6)),)
    success_doc = "the TCP within 2 cm of the target point."
    TOLERANCE = 0.02

    def reset(self, sim: TabletopSim, rng: np.random.Generator) -> None:
        xy = rng.uniform(PLACE_LOW - 0.02, PLACE_HIGH + 0.04)
        sim.set_marker("target", np.array([xy[0], xy[1], rng.uniform(TABLE_Z + 0.04, 0.14)]))

    def _distance(self, sim: TabletopSim) -> float:
        return float(np.linalg.norm(sim.tcp_pos - sim.marker_pos("target")))

    def success(self, sim: TabletopSim) -> bool:
        return self._distance(sim) <= self.TOLERANCE

    def shaped_reward(self, sim: TabletopSim) -> float:
        return 1.0 if self.success(sim) else 0.9 * _closeness(self._distance(sim), 5.0)


class Lift(Task):
    name, episode_steps = "lift", 80
    objects = (ObjectSpec("block", "box", BLOCK, GREEN, 0.03),)
    success_doc = "the block's bottom at least 5 cm above the table, held by both fingers."
    HEIGHT = 0.05

    def reset(self, sim: TabletopSim, rng: np.random.Generator) -> None:
        sim.place("block", rng.uniform(PLACE_LOW, PLACE_HIGH), rng.uniform(-np.pi / 4, np.pi / 4))

    def success(self, sim: TabletopSim) -> bool:
        return sim.bottom_z("block") - TABLE_Z >= self.HEIGHT and sim.grasped("block")

    def shaped_reward(self, sim: TabletopSim) -> float:
        return 1.0 if self.success(sim) else self._pick_shaping(sim, "block")


class PutOnPlate(Task):
    name, episode_steps = "put_on_plate", 100
    objects = (ObjectSpec("block", "box", BLOCK, RED, 0.03), ObjectSpec("plate", "cylinder", (0.06, 0.006), WHITE, 0.3))
    success_doc = ("the block's centre within the plate's radius + 3 mm of the plate's centre (xy), its bottom 0-2 cm "
                   "above the plate's top, touching neither the table nor the fingers.")

    def reset(self, sim: TabletopSim, rng: np.random.Generator) -> None:
        block, plate = _spread_xy(rng, 2, 0.12)
        sim.place("block", block, rng.uniform(-np.pi / 4, np.pi / 4))
        sim.place("plate", plate)

    def success(self, sim: TabletopSim) -> bool:
        return self._placed_on(sim, "block", "plate", 0.06, sim.top_z("plate"))

    def shaped_reward(self, sim: TabletopSim) -> float:
        return 1.0 if self.success(sim) else self._place_shaping(sim, "block", "plate")


class Push(Task):
    name, episode_steps = "push", 80
    objects = (ObjectSpec("block", "box", BLOCK, YELLOW, 0.03),)
    markers = (MarkerSpec("goal", "disc", 0.04, (0.2, 0.5, 0.9, 0.5)),)
    success_doc = "the block's centre within 3 cm of the goal region's centre (xy), resting on the table."
    TOLERANCE = 0.03

    def reset(self, sim: TabletopSim, rng: np.random.Generator) -> None:
        # Goal 10-15 cm from the block, in a direction that keeps it inside the placement area.
        while True:
            block = rng.uniform(PLACE_LOW, PLACE_HIGH)
            angle, dist = rng.uniform(-np.pi, np.pi), rng.uniform(0.10, 0.15)
            goal = block + dist * np.array([np.cos(angle), np.sin(angle)])
            if np.all(goal >= PLACE_LOW) and np.all(goal <= PLACE_HIGH):
                break
        sim.place("block", block, rng.uniform(-np.pi / 4, np.pi / 4))
        sim.set_marker("goal", np.array([goal[0], goal[1], TABLE_Z + 0.0006]))

    def _distance(self, sim: TabletopSim) -> float:
        return float(np.linalg.norm(sim.obj_pos("block")[:2] - sim.marker_pos("goal")[:2]))

    def success(self, sim: TabletopSim) -> bool:
        return self._distance(sim) <= self.TOLERANCE and sim.bottom_z("block") - TABLE_Z < 0.005

    def shaped_reward(self, sim: TabletopSim) -> float:
        if self.success(sim):
            return 1.0
        reach = _closeness(float(np.linalg.norm(sim.tcp_pos - sim.obj_pos("block"))))
        return 0.3 * reach + 0.6 * _closeness(self._distance(sim), 5.0)


class Stack(Task):
    name, episode_steps = "stack", 120
    objects = (ObjectSpec("green", "box", BLOCK, GREEN, 0.03), ObjectSpec("yellow", "box", (0.025, 0.025, 0.025),
                                                                          YELLOW, 0.1))
    success_doc = ("the green block's centre within the yellow block's half side + 3 mm of its centre (xy), its bottom "
                   "0-2 cm above the yellow block's top, touching neither the table nor the fingers.")

    def reset(self, sim: TabletopSim, rng: np.random.Generator) -> None:
        green, yellow = _spread_xy(rng, 2, 0.1)
        sim.place("green", green, rng.uniform(-np.pi / 4, np.pi / 4))
        sim.place("yellow", yellow, rng.uniform(-np.pi / 4, np.pi / 4))

    def success(self, sim: TabletopSim) -> bool:
        return self._placed_on(sim, "green", "yellow", 0.025, sim.top_z("yellow"))

    def shaped_reward(self, sim: TabletopSim) -> float:
        return 1.0 if self.success(sim) else self._place_shaping(sim, "green", "yellow")


TASKS: dict[str, type[Task]] = {t.name: t for t in (Reach, Lift, PutOnPlate, Push, Stack)}
