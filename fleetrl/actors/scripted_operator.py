"""A scripted stand-in for the person of HIL-SERL, for experiments in simulation.

On a share of episodes it takes over at a random step early in the episode and acts for a fixed number of steps
with the task's scripted expert (as a person correcting the robot would), then lets go. Its steps are stored as
interventions (``is_intervention``) and go to the ``demos`` table, exactly as a person's would.
"""

from __future__ import annotations

from typing import Any

import numpy as np


class ScriptedOperator:
    """A :class:`~fleetrl.actors.intervention.HumanInput` driven by ``expert`` (``reset(seed)``, ``act(obs)``).

    ``share``: fraction of episodes it intervenes in; ``steps``: how long it keeps control; it takes over at a
    step drawn uniformly from ``[0, latest_start]``."""

    def __init__(self, expert: Any, share: float, steps: int, latest_start: int = 10, seed: int = 0):
        if not 0.0 <= share <= 1.0:
            raise ValueError(f"teleop.scripted_share: must be in [0, 1], got {share}")
        self._expert, self._share, self._steps, self._latest = expert, share, steps, latest_start
        self._rng = np.random.default_rng(seed)
        self._t = 0
        self._window = (0, 0)
        self.episodes = self.interventions = 0

    def begin_episode(self) -> None:
        self._t = 0
        self.episodes += 1
        if self._rng.random() < self._share:
            start = int(self._rng.integers(0, self._latest + 1))
            self._window = (start, start + self._steps)
            self._expert.reset(int(self._rng.integers(1 << 31)))
            self.interventions += 1
        else:
            self._window = (0, 0)

    def poll(self, obs: Any) -> tuple[np.ndarray | None, bool]:
        t, self._t = self._t, self._t + 1
        if self._window[0] <= t < self._window[1]:
            return np.asarray(self._expert.act(obs), np.float32), True
        return None, False

    def applied(self) -> None:
        pass

    def rerecord(self) -> bool:
        return False
