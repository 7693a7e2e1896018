"""A person's input devices for taking over an actor (HIL-SERL style): SpaceMouse, gamepad, terminal keyboard.

``open_device(name, **options)`` gives a :class:`Device` whose ``read()`` returns a :class:`DeviceState` (a 7-D
Bridge-convention action, whether the person wants control, and their episode labels). See
:mod:`fleetrl.teleop.devices` for the frame and viewpoint conventions.
"""

from fleetrl.teleop.devices import (
    Device,
    DeviceState,
    DeviceUnavailable,
    GamepadDevice,
    open_device,
)
from fleetrl.teleop.keyboard import KeyboardDevice
from fleetrl.teleop.spacemouse import SpaceMouseDevice

__all__ = ["Device", "DeviceState", "DeviceUnavailable", "GamepadDevice", "KeyboardDevice", "SpaceMouseDevice",
           "open_device"]
