"""fleetrl: distributed actor-learner RL for robot fleets."""

__version__ = "0.1.0"
