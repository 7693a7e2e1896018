"""The keyboard of a terminal (also over SSH, no X server needed) as a takeover device.

A terminal reports key presses as bytes and has no key-up events; a held key is only visible through the
terminal's auto-repeat. So a motion key holds its axis at ±``speed`` for ``hold_s`` after its latest press: long
enough to bridge the pause before auto-repeat starts, short enough to stop soon after the key is released.
"""

from __future__ import annotations

import atexit
import os
import select
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from fleetrl.teleop.devices import DeviceState, DeviceUnavailable, _DeviceBase

__all__ = ["ARROW_KEYS", "COMMAND_KEYS", "MOTION_KEYS", "KeyboardDevice"]

MOTION_KEYS: dict[str, tuple[int, float]] = {
    # key: (action index, sign); operator facing the robot (see fleetrl.teleop.devices).
    "w": (0, -1.0), "s": (0, +1.0),  # away from you / toward you
    "a": (1, -1.0), "d": (1, +1.0),  # your left / your right
    "r": (2, +1.0), "f": (2, -1.0),  # up / down
    "u": (3, +1.0), "o": (3, -1.0),  # roll
    "i": (4, +1.0), "k": (4, -1.0),  # pitch
    "j": (5, +1.0), "l": (5, -1.0),  # yaw: counter-clockwise / clockwise seen from above
}
COMMAND_KEYS: dict[str, str] = {
    " ": "gripper",  # toggle closed / open
    "t": "takeover",  # toggle
    "q": "stop",  # every axis back to 0 now
    "\n": "success", "\r": "success",  # Enter (\n once the terminal maps CR to NL, \r in raw mode)
    "\x7f": "failure", "\x08": "failure",  # Backspace (DEL on most terminals, ^H on some)
    "x": "rerecord",
}
ARROW_KEYS: dict[int, str] = {ord("A"): "w", ord("B"): "s", ord("C"): "d", ord("D"): "a"}
"""Arrow keys (final byte of ``ESC [ A`` / ``ESC O A`` ...) as aliases of w / s / d / a."""

_MAX_ESCAPE = 32  # an escape sequence longer than this is garbage: dropped


class KeyboardDevice(_DeviceBase):
    """Keys read from a terminal (``fd``, default stdin) in cbreak mode; the terminal is restored on close.

    ======================  =========================================================================
    w / s (or ↑ / ↓)         -x / +x: away from you / toward you (operator facing the robot)
    a / d (or ← / →)         -y / +y: your left / your right
    r / f                    +z / -z: up / down
    u / o                    +roll / -roll
    i / k                    +pitch / -pitch
    j / l                    +yaw / -yaw (counter-clockwise / clockwise seen from above)
    space                    toggle the gripper (closed -1 / open +1; it stays until toggled again)
    t                        toggle takeover
    q                        stop: every axis back to 0 at once
    Enter                    success (episode label)
    Backspace                failure
    x                        re-record (throw the episode in progress away)
    Ctrl-C                   interrupts the program as usual (cbreak mode keeps signals)
    ======================  =========================================================================

    (:data:`MOTION_KEYS`, :data:`COMMAND_KEYS`; upper case works too; other keys are ignored.)

    A motion key sets its axis to ±``speed`` until ``hold_s`` after its latest press; the opposite key of the same
    axis takes over at once. Holding a key works through auto-repeat: ``hold_s`` must exceed the terminal's repeat
    delay (Linux console 250 ms; desktop terminals often 500-660 ms: ``xset q`` shows it, raise ``hold_s`` to match)
    and the axis keeps moving ``hold_s`` after release (use q to stop at once). ``takeover="toggle"`` (default):
    control only while toggled on with t; ``"any_input"``: also while any axis moves.

    ``fd`` other than a TTY (a pipe in tests) is read as is, without terminal setup; with ``fd`` left out, stdin
    must be a terminal. ``clock`` (default ``time.time``) times the holds and ``event_at``; the end of a hold counts
    as a change at the time the hold ran out.
    """

    name = "keyboard"

    def __init__(self, fd: int | None = None, *, speed: float = 0.5, hold_s: float = 0.3, takeover: str = "toggle",
                 gripper: float = 1.0, axis_signs: Sequence[float] | None = None, swap_xy: bool = False,
                 clock: Callable[[], float] = time.time):
        super().__init__(gripper=gripper, axis_signs=axis_signs, swap_xy=swap_xy, clock=clock)
        if takeover not in ("toggle", "any_input"):
            raise ValueError(f"keyboard: takeover must be 'toggle' or 'any_input', got {takeover!r}")
        if not 0.0 < speed <= 1.0 or hold_s <= 0.0:
            raise ValueError(f"keyboard: need 0 < speed <= 1 and hold_s > 0, got speed={speed}, hold_s={hold_s}")
        self._speed, self._hold_s, self._takeover_rule = float(speed), float(hold_s), takeover
        if fd is None:
            try:
                fd = sys.stdin.fileno()
            except (AttributeError, ValueError, OSError) as e:
                raise DeviceUnavailable(f"keyboard: no stdin to read keys from ({e})") from e
            if not os.isatty(fd):
                raise DeviceUnavailable("keyboard: stdin is not a terminal; run the teleop command in a terminal "
                                        "(not under a pipe, Ray worker or CI), or pass fd=")
        self._fd = fd
        self._termios: Any = None
        self._saved_mode: Any = None
        if os.isatty(fd):
            try:
                import termios
                import tty
            except ImportError as e:
                raise DeviceUnavailable(f"keyboard: needs a POSIX terminal (termios): {e}") from e
            self._termios, self._saved_mode = termios, termios.tcgetattr(fd)
            # cbreak, not raw: keys arrive one at a time without echo, and Ctrl-C still interrupts.
            tty.setcbreak(fd)
            atexit.register(self._restore)
        self._value = np.zeros(6)  # held value per axis
        self._until = np.full(6, -np.inf)  # when each axis's hold runs out
        self._takeover_on = False
        self._pending = b""  # an escape sequence cut by a read boundary
        self._after_cr = False  # "\r\n" is one Enter
        self._eof = False

    def read(self) -> DeviceState:
        """Consume the pending bytes and return the state at ``clock()``."""
        self._check_open()
        now = self._clock()
        pressed = self._drain(now)
        active = self._until > now
        ran_out = ~active & (self._value != 0.0)
        when = float(self._until[ran_out].max()) if ran_out.any() and not pressed else None
        self._value[~active] = 0.0
        takeover = self._takeover_on or (self._takeover_rule == "any_input" and bool(active.any()))
        return self._state(self._value, takeover, when)

    def _drain(self, now: float) -> bool:
        """Read every byte available without blocking; True if a known key was among them."""
        pressed = False
        for _ in range(256):  # a bound, in case input never runs dry
            if self._eof or not select.select([self._fd], [], [], 0)[0]:
                break
            data = os.read(self._fd, 1024)
            if not data:  # the terminal is gone: nobody is at the keys, so let go
                self._eof, self._takeover_on = True, False
                self._value[:], self._until[:] = 0.0, -np.inf
                break
            pressed = self._feed(data, now) or pressed
        return pressed

    def _feed(self, data: bytes, now: float) -> bool:
        """Parse bytes into keys (escape sequences: arrows used, others skipped whole)."""
        buf, self._pending = self._pending + data, b""
        pressed, i, n = False, 0, len(buf)
        while i < n:
            byte = buf[i]
            if byte == 0x1B:
                if i + 1 >= n:  # maybe the start of a sequence whose rest is still in flight
                    self._pending = buf[i:]
                    break
                if buf[i + 1] in (ord("["), ord("O")):  # CSI: parameters then one final byte 0x40-0x7E; SS3
                    j = i + 2
                    while j < n and not 0x40 <= buf[j] <= 0x7E:
                        j += 1
                    if j >= n:
                        self._pending = buf[i:] if n - i <= _MAX_ESCAPE else b""
                        break
                    if j == i + 2 and buf[j] in ARROW_KEYS:
                        pressed = self._key(ARROW_KEYS[buf[j]], now) or pressed
                    i = j + 1
                    continue
                i += 1  # a lone Esc, or Alt+key: drop the Esc, read the key
                continue
            if byte == 0x0A and self._after_cr:
                self._after_cr = False
                i += 1
                continue
            self._after_cr = byte == 0x0D
            if byte < 0x80:
                pressed = self._key(chr(byte).lower(), now) or pressed
            i += 1
        return pressed

    def _key(self, key: str, now: float) -> bool:
        if key in MOTION_KEYS:
            axis, sign = MOTION_KEYS[key]
            self._value[axis], self._until[axis] = sign * self._speed, now + self._hold_s
            return True
        command = COMMAND_KEYS.get(key)
        if command == "gripper":
            self._gripper = -1.0 if self._gripper > 0.0 else 1.0
        elif command == "takeover":
            self._takeover_on = not self._takeover_on
        elif command == "stop":
            self._value[:], self._until[:] = 0.0, -np.inf
        elif command is not None:
            self._events.append(command)
        return command is not None

    def _restore(self) -> None:
        if self._saved_mode is not None:
            try:
                self._termios.tcsetattr(self._fd, self._termios.TCSADRAIN, self._saved_mode)
            except self._termios.error:
                pass  # the terminal is already gone
            self._saved_mode = None

    def close(self) -> None:
        """Restore the terminal mode (the file descriptor is not ours to close)."""
        if not self._closed:
            self._restore()
            atexit.unregister(self._restore)
        super().close()
