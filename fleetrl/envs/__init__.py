"""Environments: the simulated WidowX tabletop suite, the robosuite adapter and the gymnasium adapter.

Importing this package registers fleetrl's gymnasium ids (see :mod:`fleetrl.envs.registry`).
"""

from fleetrl.envs.registry import register_envs

register_envs()
