"""Commands to a running experiment: attach or detach a robot, label a robot's episode.

The channel is the run directory, which every tool that can see the run already knows (``fleetrl status`` reads
``status.json`` there): a command is a JSON file written atomically into ``RUN_DIR/control/inbox``; the driver
claims it by renaming it into ``control/taken`` (so a command runs at most once, even if the sender gives up at
the same moment), carries it out, and writes the answer to ``control/done/<id>.json``. No port, no Ray connection
from the operator's shell, and nothing to run on the robot's machine but the robot server.
"""

from __future__ import annotations

import json
import logging
import os
import pathlib
import time
import uuid
from typing import Any

log = logging.getLogger(__name__)
CONTROL_DIR = "control"
OPS = ("attach", "detach", "label")


class ControlError(RuntimeError):
    """A command that could not be delivered or was refused; the text says why."""


def _dirs(run_dir: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path, pathlib.Path]:
    base = pathlib.Path(run_dir) / CONTROL_DIR
    return base / "inbox", base / "taken", base / "done"


def _write_atomic(path: pathlib.Path, doc: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(doc, default=str))
    os.replace(tmp, path)


# ---- the sender (fleetrl attach / detach / label) ------------------------------------------------------------
def submit(run_dir: pathlib.Path, op: str, args: dict[str, Any]) -> str:
    """Queue a command for the run's driver; returns its id."""
    if op not in OPS:
        raise ControlError(f"unknown command {op!r} (known: {', '.join(OPS)})")
    cmd_id = f"{time.time_ns()}-{uuid.uuid4().hex[:8]}"
    inbox, _, _ = _dirs(run_dir)
    _write_atomic(inbox / f"{cmd_id}.json", {"id": cmd_id, "op": op, "args": args, "sent_at": time.time()})
    return cmd_id


def wait_answer(run_dir: pathlib.Path, cmd_id: str, timeout_s: float) -> dict[str, Any]:
    """The driver's answer to ``cmd_id``. On timeout the command is withdrawn if the driver has not taken it yet
    (so it never runs later by surprise) and :class:`ControlError` says so."""
    inbox, _, done = _dirs(run_dir)
    answer = done / f"{cmd_id}.json"
    deadline = time.monotonic() + timeout_s
    taken = False
    while True:
        if answer.exists():
            return json.loads(answer.read_text())
        if time.monotonic() >= deadline:
            if taken:
                raise ControlError(f"the run's driver took the command but did not answer within {timeout_s:.0f} s "
                                   "more; see the run's events (fleetrl status)")
            try:
                (inbox / f"{cmd_id}.json").unlink()
            except FileNotFoundError:  # taken meanwhile: it runs, so wait for its answer a while longer
                taken, deadline = True, time.monotonic() + timeout_s
                continue
            raise ControlError(f"no answer from the run's driver within {timeout_s:.0f} s (is the run in "
                               f"{run_dir} still running?); the command was withdrawn")
        time.sleep(0.1)


# ---- the driver's side ---------------------------------------------------------------------------------------
class Inbox:
    """The driver's end: commands not yet taken, and the answers."""

    def __init__(self, run_dir: pathlib.Path):
        self.inbox, self.taken, self.done = _dirs(run_dir)
        for d in (self.inbox, self.taken, self.done):
            d.mkdir(parents=True, exist_ok=True)

    def take(self) -> list[dict[str, Any]]:
        """Claim every waiting command, oldest first. A file that is not a command is answered with an error."""
        commands = []
        for path in sorted(self.inbox.glob("*.json")):
            claimed = self.taken / path.name
            try:
                os.replace(path, claimed)
            except FileNotFoundError:  # withdrawn by its sender just now
                continue
            cmd_id = path.stem
            try:
                cmd = json.loads(claimed.read_text())
                if not isinstance(cmd, dict) or cmd.get("op") not in OPS or not isinstance(cmd.get("args"), dict):
                    raise ValueError(f"expected {{op: one of {list(OPS)}, args: {{...}}}}")
            except (ValueError, OSError) as exc:
                self.answer({"id": cmd_id}, ok=False, error=f"command file {claimed}: {exc}")
                continue
            cmd["id"] = cmd_id
            commands.append(cmd)
        return commands

    def answer(self, cmd: dict[str, Any], ok: bool, error: str | None = None, **result: Any) -> None:
        _write_atomic(self.done / f"{cmd['id']}.json", {"id": cmd["id"], "op": cmd.get("op"), "ok": ok,
                                                        "error": error, "answered_at": time.time(), **result})
        if not ok:
            log.warning("command %s refused: %s", cmd.get("op"), error)
