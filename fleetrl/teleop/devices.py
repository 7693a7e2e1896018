"""Operator input devices for taking over an actor: SpaceMouse (hidapi, in :mod:`fleetrl.teleop.spacemouse`),
gamepad (pygame), terminal keyboard (:mod:`fleetrl.teleop.keyboard`).

Every device turns a person's input into a :class:`DeviceState`: a 7-D action in the Bridge convention
(Δx, Δy, Δz, Δroll, Δpitch, Δyaw in [-1, 1] and an absolute gripper command, -1 closed / +1 open), whether the
person wants control now, and the episode labels they gave (success / failure / re-record).

Frame and viewpoint, the same for every device: the robot's base frame (x forward, y to the robot's left, z up), seen
by an operator who **faces the robot** (stands in front of it, or watches a camera looking at its front, as Bridge's
fixed camera does). So "away from you" is -x, "to your right" is +y, "up" is +z. This is the viewpoint SERL's and
HIL-SERL's SpaceMouse mapping assumes (rail-berkeley/serl ``spacemouse_expert.py``). Another viewpoint is one option
away: ``axis_signs`` (6 factors on the arm dims) and ``swap_xy`` (swap x/y and roll/pitch) apply after the device's
mapping; an operator standing behind the robot, looking where it looks, uses ``axis_signs=(-1, -1, 1, -1, -1, 1)``.

The hardware libraries are optional and imported only when a device is opened; without them, or without the device,
opening raises :class:`DeviceUnavailable` saying what to install or plug in. Parsing and mapping are plain functions
and every device takes its hardware object as an argument, so all of it is testable without hardware.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

__all__ = ["DEVICE_NAMES", "GAMEPAD_LAYOUTS", "Device", "DeviceState", "DeviceUnavailable", "GamepadDevice",
           "apply_deadzone", "open_device"]

DEVICE_NAMES = ("gamepad", "keyboard", "spacemouse")


@dataclasses.dataclass
class DeviceState:
    """One reading of a device."""

    action: np.ndarray
    """float32 (7,) in [-1, 1]: dx, dy, dz, droll, dpitch, dyaw, gripper (-1 closed, +1 open; absolute, it stays
    where the person left it)."""
    takeover: bool
    """The person wants control now."""
    events: list[str]
    """Since the previous read, in order: "success", "failure", "rerecord"."""
    event_at: float
    """``time.time()`` of the newest input that changed ``action`` or ``takeover`` (for latency figures)."""


@runtime_checkable
class Device(Protocol):
    """A person's input device."""

    name: str

    def read(self) -> DeviceState:
        """The newest state, without blocking (pending input is consumed first)."""

    def close(self) -> None:
        """Release the device (and restore whatever was changed to open it)."""


class DeviceUnavailable(RuntimeError):
    """A device cannot be used: its library is missing or no device is there. The message says what to do."""


def open_device(name: str, **options: Any) -> Device:
    """Open a device by name ("keyboard", "gamepad", "spacemouse") with its constructor's options.

    Raises ValueError for an unknown name and :class:`DeviceUnavailable` when the device cannot be used."""
    key = name.strip().lower()
    if key == "spacemouse":
        from fleetrl.teleop.spacemouse import SpaceMouseDevice  # spacemouse.py builds on this module

        return SpaceMouseDevice(**options)
    if key == "gamepad":
        return GamepadDevice(**options)
    if key == "keyboard":
        from fleetrl.teleop.keyboard import KeyboardDevice  # keyboard.py builds on this module

        return KeyboardDevice(**options)
    raise ValueError(f"unknown teleop device {name!r}; known devices: {', '.join(DEVICE_NAMES)}")


def apply_deadzone(values: Sequence[float] | np.ndarray, deadzone: float) -> np.ndarray:
    """Per axis: ``|v| <= deadzone`` → 0; beyond it, rescaled to ``sign(v)·(|v| − deadzone)/(1 − deadzone)`` so that
    motion starts from 0 at the edge of the deadzone instead of jumping to ``deadzone`` (and ±1 stays ±1)."""
    if not 0.0 <= deadzone < 1.0:
        raise ValueError(f"deadzone must be in [0, 1), got {deadzone}")
    v = np.asarray(values, dtype=np.float64)
    mag = np.abs(v)
    return np.where(mag > deadzone, np.sign(v) * (mag - deadzone) / (1.0 - deadzone), 0.0)


class _DeviceBase:
    """What every device shares: the persistent gripper command, pending events, the viewpoint options and the
    bookkeeping of ``event_at``."""

    name = "device"

    def __init__(self, *, gripper: float, axis_signs: Sequence[float] | None, swap_xy: bool,
                 clock: Callable[[], float]):
        if axis_signs is None:
            axis_signs = (1.0,) * 6
        if len(axis_signs) != 6:
            raise ValueError(f"{self.name}: axis_signs needs 6 values (dx dy dz droll dpitch dyaw), got {axis_signs}")
        self._signs = np.asarray(axis_signs, dtype=np.float64)
        self._swap_xy = bool(swap_xy)
        self._clock = clock
        self._gripper = float(np.clip(gripper, -1.0, 1.0))
        self._events: list[str] = []
        self._last_action = np.zeros(7, dtype=np.float32)
        self._last_action[6] = self._gripper
        self._last_takeover = False
        self._event_at = clock()
        self._closed = False

    @property
    def gripper(self) -> float:
        """The persistent gripper command (-1 closed, +1 open)."""
        return self._gripper

    def set_gripper(self, value: float) -> None:
        """Set the persistent gripper command, e.g. to the robot's actual gripper state when a takeover starts, so
        that taking over does not open or close the gripper by itself."""
        self._gripper = float(np.clip(value, -1.0, 1.0))

    def _state(self, motion: np.ndarray, takeover: bool | None, when: float | None = None) -> DeviceState:
        """Build the reading from robot-frame arm motion (6,). ``takeover`` None: any non-zero arm value of the
        final action (after ``axis_signs``, so that an axis switched off with a 0 cannot take over). ``when`` is the
        time of the change, if any (default: now)."""
        motion = np.asarray(motion, dtype=np.float64).copy()
        if self._swap_xy:
            motion[[0, 1, 3, 4]] = motion[[1, 0, 4, 3]]
        action = np.empty(7, dtype=np.float32)
        action[:6] = np.clip(motion * self._signs, -1.0, 1.0)
        action[6] = self._gripper
        if takeover is None:
            takeover = bool(np.any(action[:6] != 0.0))
        if takeover != self._last_takeover or not np.array_equal(action, self._last_action):
            self._event_at = self._clock() if when is None else when
            self._last_action, self._last_takeover = action.copy(), takeover
        events, self._events = self._events, []
        return DeviceState(action=action, takeover=bool(takeover), events=events, event_at=self._event_at)

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"{self.name}: read() after close()")

    def close(self) -> None:
        self._closed = True

    def __enter__(self) -> _DeviceBase:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ----------------------------------------------------------------------------------------------------------------
# Gamepad

GAMEPAD_LAYOUTS: dict[str, dict[str, dict[str, int]]] = {
    # pygame 2 / SDL2 raw joystick indices (pygame docs, "Common Controller Axis Mappings"). Sticks: -1 left / up.
    # Triggers: -1 released .. +1 pressed.
    "xbox": {"axes": {"lx": 0, "ly": 1, "lt": 2, "rx": 3, "ry": 4, "rt": 5},
             "buttons": {"a": 0, "b": 1, "x": 2, "y": 3, "lb": 4, "rb": 5}},
    "ps4": {"axes": {"lx": 0, "ly": 1, "rx": 2, "ry": 3, "lt": 4, "rt": 5},
            "buttons": {"a": 0, "b": 1, "x": 2, "y": 3, "lb": 9, "rb": 10}},  # Cross, Circle, Square, ..., L1, R1
}
_GAMEPAD_EVENTS = (("a", "success"), ("b", "failure"), ("x", "rerecord"))


class GamepadDevice(_DeviceBase):
    """An Xbox-style gamepad read through pygame (``pip install pygame``), headless.

    Layout (operator facing the robot; pygame 2 indices in :data:`GAMEPAD_LAYOUTS`, ``layout="auto"`` picks "ps4"
    for a pad named PS4, else "xbox"; a dict ``{"axes": ..., "buttons": ...}`` gives a custom one):

    - left stick: up = away from you (-x), down = toward you (+x); right = +y (your right);
    - right stick: up / down = +z / -z; right = -yaw (clockwise seen from above), left = +yaw;
    - D-pad (hat 0, if any): left / right = +roll / -roll, up / down = -pitch / +pitch, at ``dpad_speed``;
    - LT (left trigger) closes the gripper (-1), RT opens it (+1); the command stays after release;
    - RB held = takeover (``takeover="hold_rb"``, the default: lerobot's HIL-SERL gamepad uses this deadman button,
      because sticks drift and rest slightly off centre); ``takeover="any_input"``: RB, a stick or D-pad beyond the
      deadzone, or a trigger (HIL-SERL's "any input" rule, arXiv 2410.21845);
    - A = success, B = failure, X = re-record, once per press (edge-triggered).

    Sticks get ``deadzone`` (default 0.1) per axis, rescaled (:func:`apply_deadzone`). ``joystick`` (an object with
    ``get_axis``, ``get_button``, ``get_numaxes``, ``get_numbuttons``) and ``pump`` (called before each read) replace
    pygame, for tests."""

    name = "gamepad"

    def __init__(self, joystick: Any = None, *, pump: Callable[[], object] | None = None, index: int = 0,
                 layout: str | dict[str, dict[str, int]] = "auto", takeover: str = "hold_rb",
                 deadzone: float = 0.1, trigger_threshold: float = 0.5, dpad_speed: float = 0.5,
                 gripper: float = 1.0, axis_signs: Sequence[float] | None = None, swap_xy: bool = False,
                 clock: Callable[[], float] = time.time, importer: Callable[[str], Any] = importlib.import_module):
        super().__init__(gripper=gripper, axis_signs=axis_signs, swap_xy=swap_xy, clock=clock)
        if takeover not in ("hold_rb", "any_input"):
            raise ValueError(f"gamepad: takeover must be 'hold_rb' or 'any_input', got {takeover!r}")
        apply_deadzone([0.0], deadzone)  # validates
        self._takeover_rule, self._deadzone = takeover, deadzone
        self._trigger_threshold, self._dpad_speed = trigger_threshold, dpad_speed
        self._pygame: Any = None
        if joystick is None:
            joystick, default_pump = self._open(index, importer)
            pump = pump or default_pump
        self._js, self._pump = joystick, pump or (lambda: None)
        self._layout = self._pick_layout(layout)
        self._held = {button: False for button, _ in _GAMEPAD_EVENTS}

    def _pick_layout(self, layout: str | dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
        if isinstance(layout, dict):
            return layout
        if layout == "auto":
            name = str(getattr(self._js, "get_name", lambda: "")())
            layout = "ps4" if "PS4" in name.upper() else "xbox"
        if layout not in GAMEPAD_LAYOUTS:
            raise ValueError(f"gamepad: unknown layout {layout!r}; known: auto, {', '.join(GAMEPAD_LAYOUTS)}")
        return GAMEPAD_LAYOUTS[layout]

    def _open(self, index: int, importer: Callable[[str], Any]) -> tuple[Any, Callable[[], object]]:
        # Headless: without a video driver pygame's event queue does not run, and without the background flag SDL
        # drops joystick events when no window of ours has focus (pygame docs; pygame/pygame#3509).
        os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
        os.environ.setdefault("SDL_AUDIODRIVER", "dummy")
        os.environ.setdefault("SDL_JOYSTICK_ALLOW_BACKGROUND_EVENTS", "1")
        os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
        try:
            pygame = importer("pygame")
        except ImportError as e:
            raise DeviceUnavailable(f"gamepad: pygame is not installed: pip install pygame ({e})") from e
        try:
            pygame.display.init()
            pygame.joystick.init()
            count = pygame.joystick.get_count()
        except pygame.error as e:
            raise DeviceUnavailable(f"gamepad: pygame could not start its joystick module: {e}") from e
        if count <= index:
            raise DeviceUnavailable(
                f"gamepad: no joystick connected (pygame sees {count}, wanted index {index}); plug one in "
                "(on Linux the user needs read access to /dev/input/event*, usually the 'input' group)")
        try:
            js = pygame.joystick.Joystick(index)
            js.init()
        except pygame.error as e:
            raise DeviceUnavailable(f"gamepad: pygame could not open joystick {index}: {e}") from e
        self._pygame = pygame
        removed = getattr(pygame, "JOYDEVICEREMOVED", None)
        instance = js.get_instance_id() if hasattr(js, "get_instance_id") else None

        def pump() -> None:
            # Draining the queue (not only pumping) keeps it from filling up with events nobody reads.
            for event in pygame.event.get():
                if removed is not None and event.type == removed and getattr(event, "instance_id", None) == instance:
                    raise DeviceUnavailable("gamepad: the joystick was disconnected")
        return js, pump

    def _axis(self, key: str) -> float:
        i = self._layout["axes"].get(key)
        return float(self._js.get_axis(i)) if i is not None and i < self._js.get_numaxes() else 0.0

    def _button(self, key: str) -> bool:
        i = self._layout["buttons"].get(key)
        return bool(self._js.get_button(i)) if i is not None and i < self._js.get_numbuttons() else False

    def _trigger(self, key: str) -> bool:
        if self._layout["axes"].get(key, 1 << 30) >= self._js.get_numaxes():
            return False
        # -1 released .. +1 pressed. SDL reports 0.0 for a trigger never touched yet: (0 + 1) / 2 = 0.5 is not
        # beyond the default threshold, so an untouched trigger does not count as pressed.
        return (self._axis(key) + 1.0) / 2.0 > self._trigger_threshold

    def read(self) -> DeviceState:
        """Poll the pad and return its state."""
        self._check_open()
        self._pump()
        lx, ly, rx, ry = apply_deadzone([self._axis(k) for k in ("lx", "ly", "rx", "ry")], self._deadzone)
        motion = np.zeros(6)
        motion[0] = ly  # stick up (-1) = away from the operator = -x
        motion[1] = lx  # right = the operator's right = the robot's left = +y
        motion[2] = -ry  # up = +z
        motion[5] = -rx  # right = clockwise seen from above = -yaw
        get_numhats = getattr(self._js, "get_numhats", None)
        if get_numhats is not None and get_numhats() > 0:
            hat_x, hat_y = self._js.get_hat(0)
            motion[3] = -hat_x * self._dpad_speed  # left = counter-clockwise as the operator sees it = +roll
            motion[4] = -hat_y * self._dpad_speed  # down (toward you) = top tips toward you = +pitch
        close, open_ = self._trigger("lt"), self._trigger("rt")
        if close != open_:
            self._gripper = -1.0 if close else 1.0
        for button, event in _GAMEPAD_EVENTS:
            pressed = self._button(button)
            if pressed and not self._held[button]:
                self._events.append(event)
            self._held[button] = pressed
        rb = self._button("rb")
        if self._takeover_rule == "hold_rb":
            return self._state(motion, rb)
        return self._state(motion, True if rb or close or open_ else None)  # None: any arm motion

    def close(self) -> None:
        if not self._closed and self._pygame is not None:
            self._js.quit()
            self._pygame.joystick.quit()
        super().close()
