"""Teleop input devices without hardware: SpaceMouse HID reports, a fake joystick, key bytes through a pipe / pty."""

from __future__ import annotations

import os
import pty
import struct
import sys
import termios
import types
from collections.abc import Callable

import numpy as np
import pytest

from fleetrl.teleop import (
    Device,
    DeviceUnavailable,
    GamepadDevice,
    KeyboardDevice,
    SpaceMouseDevice,
    open_device,
)
from fleetrl.teleop.devices import apply_deadzone
from fleetrl.teleop.spacemouse import parse_spacemouse_report, spacemouse_to_action


class FakeClock:
    def __init__(self, t: float = 1000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


def no_module(name: str):
    raise ImportError(f"No module named {name!r}")


# ---------------------------------------------------------------------------------------------------------------
# SpaceMouse


def report(report_id: int, *values: int) -> list[int]:
    """A HID report as hidapi returns it: report id, then int16 little-endian values."""
    return [report_id, *struct.pack(f"<{len(values)}h", *values)]


class FakeHid:
    """Stands in for an opened cython-hidapi device."""

    def __init__(self, *reports: list[int]):
        self.queue = list(reports)
        self.closed = False
        self.fail = False
        self.opened_path: bytes | None = None
        self.nonblocking = 0

    def push(self, *reports: list[int]) -> None:
        self.queue.extend(reports)

    def read(self, max_length: int, timeout_ms: int = 0) -> list[int]:
        if self.fail:
            raise OSError("read error")
        return self.queue.pop(0)[:max_length] if self.queue else []

    def open_path(self, path: bytes) -> None:
        self.opened_path = path

    def set_nonblocking(self, flag: int) -> None:
        self.nonblocking = flag

    def close(self) -> None:
        self.closed = True


def fake_hid_module(entries: list[dict], device: FakeHid | None = None) -> types.SimpleNamespace:
    return types.SimpleNamespace(enumerate=lambda vid=0, pid=0: list(entries), device=lambda: device or FakeHid())


def test_parse_reports_decodes_signed_little_endian():
    # hidapitester sample from the PySpaceMouse troubleshooting doc: 01 76 00 00 00 FA FF = x 118, y 0, z -6.
    assert parse_spacemouse_report([0x01, 0x76, 0x00, 0x00, 0x00, 0xFA, 0xFF]).translation == (118, 0, -6)
    assert parse_spacemouse_report(report(2, -1, 350, -350)).rotation == (-1, 350, -350)
    combined = parse_spacemouse_report(report(1, 1, 2, 3, 4, 5, 6))
    assert combined.translation == (1, 2, 3) and combined.rotation == (4, 5, 6)
    padded = parse_spacemouse_report(report(1, 1, 2, 3, 4, 5, 6), combined=False)
    assert padded.translation == (1, 2, 3) and padded.rotation is None
    assert parse_spacemouse_report([3, 0x02, 0x00]).buttons == 2
    assert parse_spacemouse_report([]) is None and parse_spacemouse_report([7, 1, 2]) is None


def test_serl_axis_mapping_is_a_proper_rotation():
    # HID x right, y toward the user, z down -> robot [hid_y, hid_x, -hid_z], rotations permuted the same way.
    np.testing.assert_array_equal(spacemouse_to_action([1, 2, 3, 4, 5, 6]), [2, 1, -3, 5, 4, -6])
    perm = np.array([[0, 1, 0], [1, 0, 0], [0, 0, -1]])
    assert np.linalg.det(perm) == pytest.approx(1.0)


def test_apply_deadzone_zeroes_inside_and_starts_from_zero_outside():
    out = apply_deadzone([0.05, -0.04, 0.06, 1.0, -1.0, 0.5], 0.05)
    assert out[0] == 0.0 and out[1] == 0.0
    assert 0.0 < out[2] < 0.02  # just outside: a small value, not a jump to 0.05
    assert out[3] == 1.0 and out[4] == -1.0
    assert out[5] == pytest.approx((0.5 - 0.05) / 0.95)
    with pytest.raises(ValueError):
        apply_deadzone([0.0], 1.0)


def test_spacemouse_split_reports_signs_and_scale():
    hid = FakeHid(report(1, 100, -175, 350))
    dev = SpaceMouseDevice(hid_device=hid, deadzone=0.0)
    state = dev.read()
    assert state.action.dtype == np.float32 and state.action.shape == (7,)
    # dx = hid_y, dy = hid_x, dz = -hid_z; each / 350.
    np.testing.assert_allclose(state.action, [-0.5, 100 / 350, -1.0, 0, 0, 0, 1.0], rtol=1e-6)
    assert state.takeover is True and state.events == []
    hid.push(report(2, 35, 70, -175))  # rotation only: the translation holds
    np.testing.assert_allclose(dev.read().action, [-0.5, 100 / 350, -1.0, 0.2, 0.1, 0.5, 1.0], rtol=1e-6)
    hid.push(report(1, 0, 0, 0), report(2, 0, 0, 0))  # the puck back at centre
    state = dev.read()
    np.testing.assert_array_equal(state.action, [0, 0, 0, 0, 0, 0, 1])
    assert state.takeover is False


def test_spacemouse_combined_report_and_clipping():
    hid = FakeHid(report(1, 700, -1000, 175, -350, 0, 1400))
    state = SpaceMouseDevice(hid_device=hid, deadzone=0.0).read()
    np.testing.assert_allclose(state.action, [-1.0, 1.0, -0.5, 0.0, -1.0, -1.0, 1.0], rtol=1e-6)


def test_spacemouse_drains_to_the_newest_report():
    hid = FakeHid(report(1, 350, 0, 0), report(1, 0, 0, 0), report(1, 0, 175, 0))
    state = SpaceMouseDevice(hid_device=hid, deadzone=0.0).read()
    np.testing.assert_allclose(state.action[:3], [0.5, 0.0, 0.0])
    assert hid.queue == []


def test_spacemouse_deadzone_and_takeover_rule():
    hid = FakeHid(report(1, 17, -17, 10, 5, 0, -17))  # all |v| / 350 < 0.05
    dev = SpaceMouseDevice(hid_device=hid)
    state = dev.read()
    np.testing.assert_array_equal(state.action[:6], 0.0)
    assert state.takeover is False
    hid.push(report(1, 0, 0, 0, 0, 0, 21))  # 0.06: just outside
    state = dev.read()
    assert 0.0 < -state.action[5] < 0.02 and state.takeover is True  # dyaw = -hid_rz


def test_spacemouse_buttons_set_and_keep_the_gripper():
    hid = FakeHid([3, 0x01, 0x00])
    dev = SpaceMouseDevice(hid_device=hid)
    state = dev.read()
    assert state.action[6] == -1.0 and state.takeover is True  # left button closes, and is an intervention
    hid.push([3, 0x00, 0x00])
    state = dev.read()
    assert state.action[6] == -1.0 and state.takeover is False  # released: the command stays, control goes back
    hid.push([3, 0x02, 0x00])
    assert dev.read().action[6] == 1.0  # right button opens
    hid.push([3, 0x03, 0x00])
    state = dev.read()
    assert state.action[6] == 1.0 and state.takeover is True  # both: ambiguous, unchanged


def test_spacemouse_viewpoint_options():
    raw = report(1, 35, 70, 0, 0, 0, 0)
    plain = SpaceMouseDevice(hid_device=FakeHid(raw), deadzone=0.0).read().action
    behind = SpaceMouseDevice(hid_device=FakeHid(raw), deadzone=0.0, axis_signs=(-1, -1, 1, -1, -1, 1)).read().action
    swapped = SpaceMouseDevice(hid_device=FakeHid(raw), deadzone=0.0, swap_xy=True).read().action
    np.testing.assert_allclose(plain[:2], [0.2, 0.1])
    np.testing.assert_allclose(behind[:2], [-0.2, -0.1])
    np.testing.assert_allclose(swapped[:2], [0.1, 0.2])
    off = SpaceMouseDevice(hid_device=FakeHid(raw), deadzone=0.0, axis_signs=(0, 0, 1, 1, 1, 1)).read()
    assert off.takeover is False  # a switched-off axis cannot take over


def test_spacemouse_read_returns_fresh_arrays_and_event_at():
    clock = FakeClock(5.0)
    hid = FakeHid(report(1, 0, 175, 0))
    dev = SpaceMouseDevice(hid_device=hid, clock=clock, deadzone=0.0)
    clock.t = 6.0
    first = dev.read()
    assert first.event_at == 6.0
    first.action[:] = 9.0
    clock.t = 7.0
    second = dev.read()  # nothing new: same action, event time unchanged
    assert second.action is not first.action
    np.testing.assert_allclose(second.action[:2], [0.5, 0.0])
    assert second.event_at == 6.0


def test_spacemouse_read_error_raises_unavailable():
    hid = FakeHid()
    dev = SpaceMouseDevice(hid_device=hid)
    hid.fail = True
    with pytest.raises(DeviceUnavailable, match="unplugged"):
        dev.read()
    assert hid.closed


def test_spacemouse_missing_library(monkeypatch):
    with pytest.raises(DeviceUnavailable, match="pip install hidapi"):
        SpaceMouseDevice(importer=no_module)
    monkeypatch.setitem(sys.modules, "hid", None)  # import hid -> ImportError, with the default importer
    monkeypatch.setitem(sys.modules, "hidraw", None)
    with pytest.raises(DeviceUnavailable, match="hidapi package is not installed"):
        open_device("spacemouse")


def test_spacemouse_wrong_hid_package():
    ctypes_hid = types.SimpleNamespace(Device=object, enumerate=lambda *a: [])
    with pytest.raises(DeviceUnavailable, match="pip uninstall hid"):
        SpaceMouseDevice(importer=lambda name: ctypes_hid)


def test_spacemouse_not_found():
    a_mouse = {"path": b"/dev/hidraw0", "vendor_id": 0x046D, "product_id": 0xC077, "usage_page": 1, "usage": 2}
    with pytest.raises(DeviceUnavailable) as info:
        SpaceMouseDevice(importer=lambda name: fake_hid_module([a_mouse]))
    message = str(info.value)
    assert "no 3Dconnexion device found" in message and "256f:" in message and "c635" in message
    assert "udev" in message and "/dev/hidraw" in message


def test_spacemouse_finds_a_known_model_and_its_multi_axis_interface():
    opened = FakeHid()
    entries = [
        {"path": b"/dev/hidraw1", "vendor_id": 0x046D, "product_id": 0xC077, "usage_page": 1, "usage": 2},
        {"path": b"/dev/hidraw2", "vendor_id": 0x256F, "product_id": 0xC635, "usage_page": 12, "usage": 1},
        {"path": b"/dev/hidraw3", "vendor_id": 0x256F, "product_id": 0xC635, "usage_page": 1, "usage": 8},
    ]
    dev = SpaceMouseDevice(importer=lambda name: fake_hid_module(entries, opened), deadzone=0.0)
    assert opened.opened_path == b"/dev/hidraw3" and opened.nonblocking == 1
    assert dev.model == "SpaceMouse Compact"
    opened.push(report(1, 0, 175, 0, 350, 350, 350))  # a split model: a padded report 1 carries no rotation
    np.testing.assert_allclose(dev.read().action[:6], [0.5, 0, 0, 0, 0, 0])
    dev.close()
    assert opened.closed


# ---------------------------------------------------------------------------------------------------------------
# Gamepad


class FakeJoystick:
    """Xbox 360 under pygame 2: axes LX LY LT RX RY RT (triggers rest at -1), buttons A B X Y LB RB ..."""

    def __init__(self, name: str = "Xbox 360 Controller", hat: bool = False):
        self.axes = [0.0, 0.0, -1.0, 0.0, 0.0, -1.0]
        self.buttons = [False] * 11
        self.hat = (0, 0) if hat else None
        self.name = name
        self.quit_called = False

    def get_axis(self, i: int) -> float:
        return self.axes[i]

    def get_button(self, i: int) -> bool:
        return self.buttons[i]

    def get_numaxes(self) -> int:
        return len(self.axes)

    def get_numbuttons(self) -> int:
        return len(self.buttons)

    def get_numhats(self) -> int:
        return 0 if self.hat is None else 1

    def get_hat(self, i: int) -> tuple[int, int]:
        return self.hat

    def get_name(self) -> str:
        return self.name

    def quit(self) -> None:
        self.quit_called = True


def test_gamepad_stick_mapping():
    js = FakeJoystick()
    pumps = []
    dev = GamepadDevice(js, pump=lambda: pumps.append(1), deadzone=0.0)
    js.axes[0], js.axes[1] = 0.5, -1.0  # left stick: right half, fully up (away from you)
    js.axes[3], js.axes[4] = 1.0, -0.25  # right stick: fully right, a quarter up
    state = dev.read()
    np.testing.assert_allclose(state.action, [-1.0, 0.5, 0.25, 0.0, 0.0, -1.0, 1.0])
    assert state.action.dtype == np.float32 and len(pumps) == 1


def test_gamepad_deadzone():
    js = FakeJoystick()
    dev = GamepadDevice(js, takeover="any_input")
    js.axes[0], js.axes[4] = 0.08, -0.1
    state = dev.read()
    np.testing.assert_array_equal(state.action[:6], 0.0)
    assert state.takeover is False
    js.axes[0] = 0.2
    state = dev.read()
    assert state.action[1] == pytest.approx(0.1 / 0.9) and state.takeover is True


def test_gamepad_takeover_hold_rb_vs_any_input():
    js = FakeJoystick()
    hold = GamepadDevice(js)
    anything = GamepadDevice(js, takeover="any_input")
    js.axes[1] = -1.0
    assert hold.read().takeover is False  # the stick alone does not take over (drift)
    assert anything.read().takeover is True
    js.axes[1] = 0.0
    js.buttons[5] = True  # RB
    state = hold.read()
    assert state.takeover is True
    np.testing.assert_array_equal(state.action[:6], 0.0)
    assert anything.read().takeover is True
    js.buttons[5] = False
    assert hold.read().takeover is False and anything.read().takeover is False
    js.axes[2] = 1.0  # a trigger is input too
    assert anything.read().takeover is True and hold.read().takeover is False
    with pytest.raises(ValueError):
        GamepadDevice(js, takeover="always")


def test_gamepad_triggers_set_and_keep_the_gripper():
    js = FakeJoystick()
    dev = GamepadDevice(js)
    js.axes[2] = 0.0  # an untouched trigger reads 0.0 under SDL: not pressed
    assert dev.read().action[6] == 1.0
    js.axes[2] = 1.0  # LT
    assert dev.read().action[6] == -1.0
    js.axes[2] = -1.0
    assert dev.read().action[6] == -1.0  # stays closed after release
    js.axes[5] = 0.9  # RT
    assert dev.read().action[6] == 1.0


def test_gamepad_events_are_edge_triggered_and_ordered():
    js = FakeJoystick()
    dev = GamepadDevice(js)
    js.buttons[0] = True  # A held over three reads
    assert dev.read().events == ["success"]
    assert dev.read().events == []
    assert dev.read().events == []
    js.buttons[0] = False
    assert dev.read().events == []
    js.buttons[0] = js.buttons[1] = js.buttons[2] = True
    assert dev.read().events == ["success", "failure", "rerecord"]


def test_gamepad_ps4_layout_and_dpad():
    js = FakeJoystick(name="PS4 Controller", hat=True)
    dev = GamepadDevice(js)
    js.buttons[10] = True  # R1
    js.hat = (-1, 1)  # D-pad left and up
    state = dev.read()
    assert state.takeover is True
    np.testing.assert_allclose(state.action[3:5], [0.5, -0.5])
    js.axes[4] = 1.0  # L2 on a PS4 pad
    assert dev.read().action[6] == -1.0


def test_gamepad_missing_pygame(monkeypatch):
    with pytest.raises(DeviceUnavailable, match="pip install pygame"):
        GamepadDevice(importer=no_module)
    monkeypatch.setitem(sys.modules, "pygame", None)
    with pytest.raises(DeviceUnavailable, match="gamepad: pygame is not installed"):
        open_device("gamepad")


class FakePygame(types.SimpleNamespace):
    """The parts of pygame the gamepad uses."""

    JOYDEVICEREMOVED = 1542

    def __init__(self, joysticks: list[FakeJoystick]):
        self.queue: list[types.SimpleNamespace] = []
        js_module = types.SimpleNamespace(init=lambda: None, quit=lambda: None, get_count=lambda: len(joysticks),
                                          Joystick=lambda i: joysticks[i])
        super().__init__(error=RuntimeError, display=types.SimpleNamespace(init=lambda: None), joystick=js_module,
                         event=types.SimpleNamespace(get=self._get))

    def _get(self) -> list:
        events, self.queue = self.queue, []
        return events


def test_gamepad_opens_through_pygame_headless(monkeypatch):
    for var in ("SDL_VIDEODRIVER", "SDL_JOYSTICK_ALLOW_BACKGROUND_EVENTS"):
        monkeypatch.setenv(var, "x")  # so that monkeypatch restores the variable's absence afterwards
        monkeypatch.delenv(var)
    with pytest.raises(DeviceUnavailable, match="^gamepad: no joystick connected"):
        GamepadDevice(importer=lambda name: FakePygame([]))
    assert os.environ["SDL_VIDEODRIVER"] == "dummy"
    assert os.environ["SDL_JOYSTICK_ALLOW_BACKGROUND_EVENTS"] == "1"

    js = FakeJoystick()
    js.init = lambda: None
    js.get_instance_id = lambda: 3
    pygame = FakePygame([js])
    dev = GamepadDevice(importer=lambda name: pygame)
    js.buttons[5] = True
    assert dev.read().takeover is True
    pygame.queue.append(types.SimpleNamespace(type=FakePygame.JOYDEVICEREMOVED, instance_id=3))
    with pytest.raises(DeviceUnavailable, match="disconnected"):
        dev.read()
    dev.close()
    assert js.quit_called


# ---------------------------------------------------------------------------------------------------------------
# Keyboard


@pytest.fixture
def pipe():
    r, w = os.pipe()
    yield r, w
    for fd in (r, w):
        try:
            os.close(fd)
        except OSError:
            pass


def keyboard(pipe, clock: FakeClock, **options) -> tuple[KeyboardDevice, Callable[[bytes], int]]:
    r, w = pipe
    dev = KeyboardDevice(fd=r, clock=clock, **options)
    return dev, lambda data: os.write(w, data)


def test_keyboard_press_holds_the_axis_for_hold_s(pipe):
    clock = FakeClock(0.0)
    dev, press = keyboard(pipe, clock)
    press(b"w")
    state = dev.read()
    np.testing.assert_array_equal(state.action, [-0.5, 0, 0, 0, 0, 0, 1])  # w: away from the operator
    assert state.takeover is False and state.event_at == 0.0
    clock.t = 0.25
    assert dev.read().action[0] == -0.5
    clock.t = 0.31
    state = dev.read()
    assert state.action[0] == 0.0
    assert state.event_at == pytest.approx(0.3)  # the hold ran out at 0.3, not when it was noticed


def test_keyboard_repeats_keep_the_axis(pipe):
    clock = FakeClock(0.0)
    dev, press = keyboard(pipe, clock, speed=1.0)
    for t in (0.0, 0.25, 0.35, 0.45):  # first press, then auto-repeat
        clock.t = t
        press(b"d")
        assert dev.read().action[1] == 1.0
    clock.t = 0.7
    assert dev.read().action[1] == 1.0  # 0.25 after the latest repeat
    clock.t = 0.76
    assert dev.read().action[1] == 0.0


def test_keyboard_all_motion_keys_and_opposites(pipe):
    clock = FakeClock(0.0)
    dev, press = keyboard(pipe, clock, speed=1.0)
    press(b"srujiW")  # upper case works; W overrides s on the same axis
    np.testing.assert_array_equal(dev.read().action[:6], [-1, 0, 1, 1, 1, 1])
    press(b"fadolk")
    np.testing.assert_array_equal(dev.read().action[:6], [-1, 1, -1, -1, -1, -1])
    press(b"q")  # stop
    np.testing.assert_array_equal(dev.read().action[:6], 0.0)


def test_keyboard_gripper_and_takeover_toggles_persist(pipe):
    clock = FakeClock(0.0)
    dev, press = keyboard(pipe, clock)
    press(b" ")
    assert dev.read().action[6] == -1.0
    clock.t = 10.0
    state = dev.read()
    assert state.action[6] == -1.0 and state.takeover is False
    press(b"t")
    assert dev.read().takeover is True
    clock.t = 20.0
    assert dev.read().takeover is True
    press(b" t")
    state = dev.read()
    assert state.action[6] == 1.0 and state.takeover is False


def test_keyboard_any_input_takeover(pipe):
    clock = FakeClock(0.0)
    dev, press = keyboard(pipe, clock, takeover="any_input")
    press(b"r")
    assert dev.read().takeover is True
    clock.t = 1.0
    assert dev.read().takeover is False


def test_keyboard_events_in_order(pipe):
    clock = FakeClock(0.0)
    dev, press = keyboard(pipe, clock)
    press(b"\n\x7fx\r\n\x08")
    state = dev.read()
    assert state.events == ["success", "failure", "rerecord", "success", "failure"]  # \r\n is one Enter
    assert dev.read().events == []
    np.testing.assert_array_equal(state.action, [0, 0, 0, 0, 0, 0, 1])


def test_keyboard_ignores_unknown_keys(pipe):
    clock = FakeClock(0.0)
    dev, press = keyboard(pipe, clock)
    press("zZ9#é\x01\t".encode())
    state = dev.read()
    np.testing.assert_array_equal(state.action, [0, 0, 0, 0, 0, 0, 1])
    assert state.events == [] and state.takeover is False


def test_keyboard_escape_sequences(pipe):
    clock = FakeClock(0.0)
    dev, press = keyboard(pipe, clock, speed=1.0)
    press(b"\x1b[1;5C\x1bOP\x1b[15~")  # Ctrl-Right, F1, F5: skipped whole (no stray 'C', 'P' or '~')
    np.testing.assert_array_equal(dev.read().action[:6], 0.0)
    press(b"\x1b[A")  # up arrow = w
    assert dev.read().action[0] == -1.0
    press(b"\x1b[")  # a sequence cut by the read boundary
    assert dev.read().action[0] == -1.0
    press(b"B")
    assert dev.read().action[0] == 1.0  # down arrow = s
    press(b"\x1b")  # a lone Esc, then a key
    dev.read()
    press(b"d")
    assert dev.read().action[1] == 1.0


def test_keyboard_end_of_input_lets_go(pipe):
    clock = FakeClock(0.0)
    dev, press = keyboard(pipe, clock)
    press(b"tw")
    assert dev.read().takeover is True
    os.close(pipe[1])
    state = dev.read()
    assert state.takeover is False and state.action[0] == 0.0


def test_keyboard_fresh_arrays(pipe):
    dev, press = keyboard(pipe, FakeClock(0.0))
    press(b"w")
    first = dev.read()
    first.action[:] = 0.0
    assert dev.read().action[0] == -0.5


def test_keyboard_on_a_terminal_sets_cbreak_and_restores():
    master, slave = pty.openpty()
    try:
        before = termios.tcgetattr(slave)
        dev = KeyboardDevice(fd=slave, clock=FakeClock(0.0))
        lflag = termios.tcgetattr(slave)[3]
        assert not lflag & termios.ICANON and not lflag & termios.ECHO
        os.write(master, b"r\r")  # Enter as a terminal sends it
        state = dev.read()
        assert state.action[2] == 0.5 and state.events == ["success"]
        dev.close()
        assert termios.tcgetattr(slave) == before
    finally:
        os.close(master)
        os.close(slave)


def test_keyboard_needs_a_terminal_on_stdin(monkeypatch, pipe):
    monkeypatch.setattr(sys, "stdin", os.fdopen(os.dup(pipe[0]), "rb"))
    with pytest.raises(DeviceUnavailable, match="not a terminal"):
        KeyboardDevice()
    sys.stdin.close()


# ---------------------------------------------------------------------------------------------------------------
# open_device


def test_open_device(pipe):
    with pytest.raises(ValueError, match="gamepad, keyboard, spacemouse"):
        open_device("joystick")
    dev = open_device("keyboard", fd=pipe[0], clock=FakeClock(0.0))
    assert isinstance(dev, KeyboardDevice) and isinstance(dev, Device) and dev.name == "keyboard"
    dev.close()
    with pytest.raises(RuntimeError, match="after close"):
        dev.read()
    with pytest.raises(DeviceUnavailable, match="spacemouse"):
        open_device("SpaceMouse", importer=no_module)
