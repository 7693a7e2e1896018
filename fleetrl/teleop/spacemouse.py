"""The 3Dconnexion SpaceMouse as a teleop device, read through hidapi: report parsing, the axis mapping (SERL's,
operator facing the robot) and :class:`SpaceMouseDevice`. Conventions shared by every device are in
:mod:`fleetrl.teleop.devices`."""

from __future__ import annotations

import dataclasses
import importlib
import struct
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from fleetrl.teleop.devices import DeviceState, DeviceUnavailable, _DeviceBase, apply_deadzone

SPACEMOUSE_IDS: dict[tuple[int, int], tuple[str, bool]] = {
    # (vendor, product): (model, combined 13-byte motion report). OpenSCAD HidApiInputDriver.cc and pyspacemouse
    # devices.toml. Old models (Logitech vendor id) send translation and rotation as reports 1 and 2.
    (0x046D, 0xC603): ("SpaceMouse Plus XT", False),
    (0x046D, 0xC605): ("CADman", False),
    (0x046D, 0xC606): ("SpaceMouse Classic", False),
    (0x046D, 0xC621): ("Spaceball 5000", False),
    (0x046D, 0xC623): ("SpaceTraveller", False),
    (0x046D, 0xC625): ("SpacePilot", False),
    (0x046D, 0xC626): ("SpaceNavigator", False),
    (0x046D, 0xC627): ("SpaceExplorer", False),
    (0x046D, 0xC628): ("SpaceNavigator for Notebooks", False),
    (0x046D, 0xC629): ("SpacePilot Pro", False),
    (0x046D, 0xC62B): ("SpaceMouse Pro", False),
    (0x256F, 0xC635): ("SpaceMouse Compact", False),
    (0x256F, 0xC641): ("SpaceMouse USB", False),
    (0x256F, 0xC62E): ("SpaceMouse Wireless (cabled)", True),
    (0x256F, 0xC62F): ("SpaceMouse Wireless (receiver)", True),
    (0x256F, 0xC631): ("SpaceMouse Pro Wireless (cabled)", True),
    (0x256F, 0xC632): ("SpaceMouse Pro Wireless (receiver)", True),
    (0x256F, 0xC633): ("SpaceMouse Enterprise", True),
    (0x256F, 0xC638): ("SpaceMouse Pro Wireless Bluetooth", True),
    (0x256F, 0xC63A): ("SpaceMouse Wireless (Bluetooth)", True),
    (0x256F, 0xC652): ("3Dconnexion Universal Receiver", True),
}
_VENDOR_3DCONNEXION = 0x256F


@dataclasses.dataclass(frozen=True)
class SpaceMouseReport:
    """The content of one HID input report; fields the report does not carry are None."""

    translation: tuple[int, int, int] | None = None
    rotation: tuple[int, int, int] | None = None
    buttons: int | None = None


def parse_spacemouse_report(data: Sequence[int], combined: bool | None = None) -> SpaceMouseReport | None:
    """Decode one report as hidapi returns it (byte 0 = report id). None for a report that carries nothing known.

    - id 1, 7 bytes: translation x, y, z (int16 little-endian at bytes 1-6);
    - id 1, 13 bytes (newer models): translation then rotation rx, ry, rz (bytes 7-12);
    - id 2: rotation rx, ry, rz (bytes 1-6);
    - id 3: buttons, a bitmask from byte 1 (little-endian, up to 4 bytes).

    ``combined`` = None decides by length (as OpenSCAD does); False reads only the translation from report 1 even if
    it is padded to 13 bytes."""
    if len(data) < 2:
        return None
    report_id, n = data[0], len(data)
    if report_id == 1 and n >= 13 and combined is not False:
        x, y, z, rx, ry, rz = struct.unpack_from("<6h", bytes(data[1:13]))
        return SpaceMouseReport(translation=(x, y, z), rotation=(rx, ry, rz))
    if report_id == 1 and n >= 7:
        return SpaceMouseReport(translation=struct.unpack_from("<3h", bytes(data[1:7])))
    if report_id == 2 and n >= 7:
        return SpaceMouseReport(rotation=struct.unpack_from("<3h", bytes(data[1:7])))
    if report_id == 3:
        return SpaceMouseReport(buttons=int.from_bytes(bytes(data[1:5]), "little"))
    return None


def spacemouse_to_action(hid_axes: Sequence[float] | np.ndarray) -> np.ndarray:
    """Raw HID axes (x right, y toward the user, z down; rx, ry, rz about them) → robot-frame (dx, dy, dz, droll,
    dpitch, dyaw) for an operator facing the robot.

    SERL / HIL-SERL (``spacemouse_expert.py``: ``[-y, x, z, -roll, -pitch, -yaw]`` of pyspacemouse's legacy axes)
    come to ``[hid_y, hid_x, -hid_z, hid_ry, hid_rx, -hid_rz]``: pull the puck toward you and the gripper comes toward
    you (+x), push it right and it goes right (+y), lift it and it goes up; twist it counter-clockwise (seen from
    above) and the gripper yaws counter-clockwise. The map is a proper rotation, so the rotations follow the same
    permutation as the translations."""
    x, y, z, rx, ry, rz = np.asarray(hid_axes, dtype=np.float64)
    return np.array([y, x, -z, ry, rx, -rz])


def _import_hid(importer: Callable[[str], Any]) -> Any:
    """The cython-hidapi module: on Linux its ``hidraw`` backend first (kernel hidraw nodes, the ones udev rules give
    access to; the libusb ``hid`` backend needs the kernel driver detached, per PySpaceMouse), else ``hid``."""
    names = ("hidraw", "hid") if sys.platform.startswith("linux") else ("hid",)
    errors, wrong_package = [], False
    for module_name in names:
        try:
            module = importer(module_name)
        except ImportError as e:
            errors.append(f"{module_name}: {e}")
            continue
        if hasattr(module, "device") and hasattr(module, "enumerate"):
            return module
        # apmorton's ctypes package, also imported as ``hid`` (``Device`` with a capital D): a different API.
        wrong_package = wrong_package or hasattr(module, "Device")
    if wrong_package:
        raise DeviceUnavailable("spacemouse: the installed 'hid' module is the ctypes 'hid' package, not cython "
                                "'hidapi' (both install a module named hid): pip uninstall hid && pip install hidapi")
    raise DeviceUnavailable("spacemouse: the hidapi package is not installed: pip install hidapi "
                            f"({'; '.join(errors) or 'no usable hid module'})")


def _looked_for() -> str:
    by_vendor: dict[int, list[str]] = {}
    for vendor, product in SPACEMOUSE_IDS:
        by_vendor.setdefault(vendor, []).append(f"{product:04x}")
    return ", ".join(f"{vendor:04x}:{{{','.join(products)}}}" for vendor, products in by_vendor.items())


def _find_spacemouse(entries: list[dict[str, Any]], vendor_id: int | None,
                     product_id: int | None) -> dict[str, Any] | None:
    """The enumerate() entry to open: given ids first, else a known model, else any 3Dconnexion multi-axis
    controller (HID usage page 1, usage 8). Among a device's interfaces, the multi-axis one is preferred."""
    def multi_axis(e: dict[str, Any]) -> bool:
        return e.get("usage_page") == 1 and e.get("usage") == 8

    if vendor_id is not None or product_id is not None:
        found = [e for e in entries if (vendor_id is None or e.get("vendor_id") == vendor_id)
                 and (product_id is None or e.get("product_id") == product_id)]
    else:
        found = [e for e in entries if (e.get("vendor_id"), e.get("product_id")) in SPACEMOUSE_IDS]
        if not found:
            found = [e for e in entries if e.get("vendor_id") == _VENDOR_3DCONNEXION and multi_axis(e)]
    found.sort(key=lambda e: not multi_axis(e))
    return found[0] if found else None


class SpaceMouseDevice(_DeviceBase):
    """A 3Dconnexion SpaceMouse read through hidapi (``pip install hidapi``).

    - Axes: each raw value / ``scale`` (350, the range the report descriptor declares; some drivers report beyond
      it, so the result is clipped to [-1, 1]), then ``deadzone`` per axis (:func:`apply_deadzone`), then
      :func:`spacemouse_to_action` (SERL's mapping, operator facing the robot), then ``swap_xy`` / ``axis_signs``.
    - Buttons: the left button (bit ``close_button_bit``) closes the gripper (-1), the right one
      (``open_button_bit``) opens it (+1); the command stays after release (Bridge's gripper is absolute, where
      HIL-SERL's gripper critic reads "no button" as "stay").
    - Takeover, HIL-SERL's rule (arXiv 2410.21845; ``SpacemouseIntervention``: intervene when the 6-D input is
      non-zero or a gripper button is pressed): any axis beyond the deadzone or a gripper button held. Its own
      threshold is 1e-3 because the device reports exact zeros at rest; the default deadzone here also absorbs
      a light touch.
    - The device sends a report only when a value changes (and zeros when the puck returns to centre), so the last
      values hold between reports.

    Opening: ``hid_device`` (any object with ``read(max_length, timeout_ms) -> list[int]``, used as is: tests),
    else ``path``, else ``vendor_id`` / ``product_id``, else the first known 3Dconnexion model found
    (:data:`SPACEMOUSE_IDS`). ``read`` raises :class:`DeviceUnavailable` if the device goes away.
    """

    name = "spacemouse"

    def __init__(self, hid_device: Any = None, *, path: bytes | str | None = None, vendor_id: int | None = None,
                 product_id: int | None = None, deadzone: float = 0.05, scale: float = 350.0,
                 axis_signs: Sequence[float] | None = None, swap_xy: bool = False, gripper: float = 1.0,
                 close_button_bit: int = 0, open_button_bit: int = 1, combined: bool | None = None,
                 clock: Callable[[], float] = time.time, importer: Callable[[str], Any] = importlib.import_module):
        super().__init__(gripper=gripper, axis_signs=axis_signs, swap_xy=swap_xy, clock=clock)
        apply_deadzone([0.0], deadzone)  # validates
        self._deadzone, self._scale = deadzone, float(scale)
        self._close_mask, self._open_mask = 1 << close_button_bit, 1 << open_button_bit
        self._combined = combined
        self._axes = np.zeros(6)  # raw HID order, scaled and clipped
        self._buttons = 0
        self.model = "injected" if hid_device is not None else f"path {path!r}"
        self._hid = hid_device if hid_device is not None else self._open(path, vendor_id, product_id, importer)

    def _open(self, path: bytes | str | None, vendor_id: int | None, product_id: int | None,
              importer: Callable[[str], Any]) -> Any:
        hid = _import_hid(importer)
        if path is None:
            entry = _find_spacemouse(list(hid.enumerate(0, 0)), vendor_id, product_id)
            if entry is None:
                wanted = (f"{vendor_id or 0:04x}:{product_id or 0:04x} (0 = any)"
                          if vendor_id is not None or product_id is not None else _looked_for())
                raise DeviceUnavailable(
                    f"spacemouse: no 3Dconnexion device found (looked for {wanted}); plug it in (a wireless one: "
                    "its receiver, and switch it on); on Linux you may need a udev rule giving your user access to "
                    '/dev/hidraw*, e.g. KERNEL=="hidraw*", ATTRS{idVendor}=="256f", MODE="0666" (and 046d for '
                    "older models), then: udevadm control --reload-rules && udevadm trigger")
            path = entry["path"]
            ids = (entry.get("vendor_id"), entry.get("product_id"))
            model, combined = SPACEMOUSE_IDS.get(ids, (f"{ids[0]:04x}:{ids[1]:04x}", None))
            self.model = model
            if self._combined is None and combined is False:
                self._combined = False  # a split-report model: never read rotation from a padded report 1
        device = hid.device()
        try:
            device.open_path(path.encode() if isinstance(path, str) else path)
            device.set_nonblocking(1)
        except OSError as e:
            raise DeviceUnavailable(
                f"spacemouse: cannot open {path!r} ({e}); on Linux check the permissions of /dev/hidraw* (udev "
                "rule), and that no other program (spacenavd, 3DxWare, 3DconnexionHelper) holds the device") from e
        return device

    def _apply(self, report: SpaceMouseReport) -> None:
        if report.translation is not None:
            self._axes[:3] = np.clip(np.asarray(report.translation) / self._scale, -1.0, 1.0)
        if report.rotation is not None:
            self._axes[3:] = np.clip(np.asarray(report.rotation) / self._scale, -1.0, 1.0)
        if report.buttons is not None:
            self._buttons = report.buttons
            close, open_ = bool(report.buttons & self._close_mask), bool(report.buttons & self._open_mask)
            if close != open_:  # both at once: ambiguous, keep the command
                self._gripper = -1.0 if close else 1.0

    def read(self) -> DeviceState:
        """Drain the pending reports and return the newest state."""
        self._check_open()
        for _ in range(4096):  # a bound, in case a device never runs dry
            try:
                data = self._hid.read(64, 0)
            except OSError as e:
                self._axes[:], self._buttons = 0.0, 0
                self.close()
                raise DeviceUnavailable(f"spacemouse: read failed ({e}): was it unplugged?") from e
            if not data:
                break
            report = parse_spacemouse_report(data, self._combined)
            if report is not None:
                self._apply(report)
        motion = spacemouse_to_action(apply_deadzone(self._axes, self._deadzone))
        buttons_held = bool(self._buttons & (self._close_mask | self._open_mask))
        return self._state(motion, True if buttons_held else None)

    def close(self) -> None:
        if not self._closed and hasattr(self._hid, "close"):
            self._hid.close()
        super().close()


