"""``fleetrl status``: find a run, read the ``status.json`` its driver writes, render it as tables.

The driver replaces ``RUN_DIR/status.json`` atomically every ``logging.interval_s`` seconds (schema ``version`` 1:
actors, replay, learner, events). This module only reads it, so it needs neither Ray nor Reverb. Rendering is
lenient: any number may be null ("–"), unknown keys are ignored and a missing section is reported, not fatal.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import time
from collections.abc import Callable
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

STATUS_FILE = "status.json"
#: Shown for a null, missing or unreadable value.
DASH = "–"
#: ``logging.interval_s``'s default, for a status file that does not say its own interval.
DEFAULT_INTERVAL_S = 2.0
#: How many of the newest events the view lists.
MAX_EVENTS = 5
#: ``NAME-YYYYmmdd-HHMMSS`` or ``NAME-YYYYmmdd-HHMMSS-n`` (runs.new_run's names).
_STAMP = re.compile(r"^(?P<name>.+)-(?P<stamp>\d{8}-\d{6})(?:-(?P<n>\d+))?$")
_STYLES = {"ok": "green", "running": "green", "restarting": "yellow", "filling": "yellow", "blocked": "yellow",
           "dead": "bold red", "failed": "bold red", "stopped": "dim"}


class StatusError(Exception):
    """A run or its status file could not be found or read; the message says what was looked for."""


def _stamp(name: str) -> tuple[int, int] | None:
    """(timestamp as a number, suffix) of a run directory name: newer sorts higher; None without a run timestamp."""
    m = _STAMP.match(name)
    return (int(m["stamp"].replace("-", "")), int(m["n"] or 1)) if m else None


def _runs_listing(root: pathlib.Path, limit: int = 5) -> str:
    """A few run directories under ``root``, newest first, for error messages."""
    if not root.is_dir():
        return f"run root {root} does not exist (give --run-root, or the run directory's path)"
    dirs = [p.name for p in root.iterdir() if p.is_dir()]
    if not dirs:
        return f"there are no runs under {root}"
    # Timestamped names newest first, then anything else alphabetically.
    dirs.sort(key=lambda n: (_stamp(n) is None, tuple(-x for x in _stamp(n) or ()), n))
    more = f", … ({len(dirs)} in all)" if len(dirs) > limit else ""
    return f"runs under {root} (newest first): " + ", ".join(dirs[:limit]) + more


def find_run(run: str, run_root: str | os.PathLike[str] = "runs") -> pathlib.Path:
    """The run directory ``run`` names: a directory path (anything with a path separator, or starting with ``.`` or
    ``~``), an exact directory name under ``run_root``, or a run ``NAME`` meaning the newest ``NAME-*`` directory
    by the timestamp in its name. Raises :class:`StatusError` naming what was looked for and listing runs."""
    root = pathlib.Path(run_root).expanduser()
    path = pathlib.Path(run).expanduser()
    seps = [s for s in (os.sep, os.altsep) if s]
    if path.is_absolute() or any(s in run for s in seps) or run.startswith((".", "~")):
        if path.is_dir():
            return path
        raise StatusError(f"--run {run}: no such run directory")
    if (root / run).is_dir():
        return root / run
    candidates = []
    if root.is_dir():
        for p in root.iterdir():
            m = _STAMP.match(p.name)
            if m and m["name"] == run and p.is_dir():
                candidates.append(p)
    if candidates:
        return max(candidates, key=lambda p: _stamp(p.name) or (0, 0))
    # Last resort: a run directory in the working directory (e.g. after `cd runs`). Only one that looks like a run,
    # so an unrelated folder that happens to share the name is not picked.
    if path.is_dir() and ((path / STATUS_FILE).is_file() or (path / "config.yaml").is_file()):
        return path
    raise StatusError(f"--run {run}: no run directory {root / run} and no {run}-YYYYmmdd-HHMMSS run under {root}; "
                      + _runs_listing(root))


def read_status_text(run_dir: str | os.PathLike[str]) -> str:
    """The raw text of ``run_dir``'s status file, checked to be a JSON object. Raises :class:`StatusError`."""
    path = pathlib.Path(run_dir) / STATUS_FILE
    if not path.is_file():
        raise StatusError(f"{run_dir}: the run has not written status yet (is it running? it writes {STATUS_FILE} "
                          "every logging.interval_s)")
    try:
        text = path.read_text()
        data = json.loads(text)
    except (OSError, UnicodeDecodeError) as exc:
        raise StatusError(f"{path}: cannot read it: {exc}") from exc
    except json.JSONDecodeError as exc:
        raise StatusError(f"{path}: not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise StatusError(f"{path}: expected a JSON object, found {type(data).__name__}")
    return text


def read_status(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """``run_dir``'s status as a dict (see the module docstring). Raises :class:`StatusError`."""
    return json.loads(read_status_text(run_dir))


# --- formatting -----------------------------------------------------------------------------------------------


def _is_num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _fmt(v: Any, fmt: str = "{:,.0f}") -> str:
    """A number formatted, "–" for null; anything else (a newer writer's string, say) as it is."""
    if v is None:
        return DASH
    return fmt.format(v) if _is_num(v) else str(v)


def _pct(v: Any) -> str:
    return _fmt(v * 100 if _is_num(v) else v, "{:.1f}%")


def duration(s: float) -> str:
    """Seconds as "12 s", "5 min", "3.2 h" or "1.5 d"."""
    if s < 120:
        return f"{s:.0f} s"
    if s < 7200:
        return f"{s / 60:.0f} min"
    return f"{s / 3600:.1f} h" if s < 172800 else f"{s / 86400:.1f} d"


def age(t: Any, now: float) -> str:
    """``t`` (unix seconds) as an age relative to ``now``, e.g. "12 s ago"; "–" if unknown."""
    if not _is_num(t):
        return DASH
    return duration(max(0.0, now - t)) + " ago"  # clamp: the writer's clock may run slightly ahead of the viewer's


def _state(v: Any) -> Text:
    """A health/state word coloured by what it means; unknown words stay plain."""
    word = DASH if v is None else str(v)
    words = re.findall(r"[a-z]+", word.lower())  # whole words: "broken" must not read as "ok"
    style = next((_STYLES[w] for w in words if w in _STYLES), "")
    return Text(word, style=style)


def _dict(v: Any) -> dict[str, Any]:
    return v if isinstance(v, dict) else {}


def _list(v: Any) -> list[dict[str, Any]]:
    return [x for x in v if isinstance(x, dict)] if isinstance(v, list) else []


def _row(table: Table, *cells: str | Text) -> None:
    """Add a row; plain strings become Text so that "[...]" in a name or message is not read as rich markup."""
    table.add_row(*(Text(c) if isinstance(c, str) else c for c in cells))


def _checkpoint(ckpt: Any, now: float) -> str:
    if not isinstance(ckpt, dict):
        return "none yet"
    parts = [f"{label} {_fmt(ckpt[k])}" for k, label in (("learner_steps", "step"), ("env_steps", "env")) if k in ckpt]
    return age(ckpt.get("time"), now) + (f" ({', '.join(parts)})" if parts else "")


# --- rendering ------------------------------------------------------------------------------------------------


def _header(status: dict[str, Any], now: float) -> Text:
    state = status.get("state")
    interval = status.get("interval_s") if _is_num(status.get("interval_s")) else DEFAULT_INTERVAL_S
    updated = status.get("updated_at")
    steps = f"{_fmt(status.get('env_steps'))} / {_fmt(status.get('total_env_steps'))}"
    head = Text.assemble(("run ", "dim"), (_fmt(status.get("run")), "bold"), ("  state ", "dim"), _state(state),
                         ("  env steps ", "dim"), steps, ("  updated ", "dim"), age(updated, now),
                         ("  started ", "dim"), age(status.get("started_at"), now))
    # Stale only matters while the run claims to be running: a stopped run's file is old by design.
    if state == "running" and _is_num(updated) and now - updated > 3 * interval:
        head.append(f"  STALE: no update for {duration(now - updated)} (expected every {interval:g} s); "
                    "is the driver still running?", style="bold red")
    return head


def _actors(actors: list[dict[str, Any]]) -> Table:
    health = [str(a.get("health")) for a in actors]
    counts = ", ".join(f"{health.count(h)} {h}" for h in dict.fromkeys(health))
    table = Table(title=f"Actors ({counts or 'none'})", title_justify="left")
    for col in ("id", "kind", "node", "health", "restarts", "env steps", "steps/s", "policy ver", "lag", "episodes",
                "intervention", "success", "return"):
        table.add_column(col, justify="left" if col in ("kind", "node", "health") else "right", no_wrap=True)
    for a in actors:
        _row(table, _fmt(a.get("id")), _fmt(a.get("kind")), _fmt(a.get("node")), _state(a.get("health")),
                      _fmt(a.get("restarts")), _fmt(a.get("env_steps")), _fmt(a.get("env_steps_per_s"), "{:,.1f}"),
                      _fmt(a.get("policy_version")), _fmt(a.get("policy_lag")), _fmt(a.get("episodes")),
                      _pct(a.get("intervention_rate")), _pct(a.get("success_rate")),
                      _fmt(a.get("episode_return"), "{:,.2f}"))
    rates = [a["env_steps_per_s"] for a in actors if _is_num(a.get("env_steps_per_s"))]
    if rates:
        table.caption, table.caption_justify = f"total {sum(rates):,.1f} env steps/s", "left"
    return table


def _replay(replay: dict[str, Any], now: float) -> Group:
    line = Text.assemble(("Replay ", "bold"), _fmt(replay.get("address")), (" on ", "dim"), _fmt(replay.get("node")),
                         ("  health ", "dim"), _state(replay.get("health")), ("  restarts ", "dim"),
                         _fmt(replay.get("restarts")), ("  lost items ", "dim"), _fmt(replay.get("lost_items")),
                         ("  last checkpoint ", "dim"), _checkpoint(replay.get("last_checkpoint"), now))
    table = Table(title="Replay tables", title_justify="left")
    for col in ("table", "size", "max size", "inserts/s", "samples/s", "rate limiter"):
        table.add_column(col, justify="left" if col in ("table", "rate limiter") else "right", no_wrap=True)
    for t in _list(replay.get("tables")):
        _row(table, _fmt(t.get("name")), _fmt(t.get("size")), _fmt(t.get("max_size")),
                      _fmt(t.get("inserts_per_s"), "{:,.1f}"), _fmt(t.get("samples_per_s"), "{:,.1f}"),
                      _state(t.get("rate_limiter")))
    return Group(line, table)


def _learner(learner: dict[str, Any], now: float) -> Table:
    table = Table(title="Learner", title_justify="left")
    for col in ("node", "device", "health", "restarts", "learner steps", "updates/s", "UTD (achieved / target)",
                "policy ver", "last checkpoint"):
        table.add_column(col, justify="left" if col in ("node", "device", "health", "last checkpoint") else "right",
                         no_wrap=True)
    utd = f"{_fmt(learner.get('utd_ratio'), '{:.2f}')} / {_fmt(learner.get('utd_target'), '{:.2f}')}"
    _row(table, _fmt(learner.get("node")), _fmt(learner.get("device")), _state(learner.get("health")),
                  _fmt(learner.get("restarts")), _fmt(learner.get("learner_steps")),
                  _fmt(learner.get("updates_per_s"), "{:,.1f}"), utd, _fmt(learner.get("policy_version")),
                  _checkpoint(learner.get("last_checkpoint"), now))
    return table


def _events(events: list[dict[str, Any]], now: float) -> Table:
    # Newest last, as a log reads; a writer that appends out of order is still shown in time order.
    newest = sorted(events, key=lambda e: e["time"] if _is_num(e.get("time")) else float("-inf"))[-MAX_EVENTS:]
    table = Table(title=f"Events (last {len(newest)} of {len(events)})", title_justify="left")
    for col in ("when", "component", "what", "action", "recovery (s)", "lost items"):
        table.add_column(col, justify="right" if col in ("recovery (s)", "lost items") else "left")
    for e in newest:
        _row(table, age(e.get("time"), now), _fmt(e.get("component")), _fmt(e.get("what")), _fmt(e.get("action")),
             _fmt(e.get("recovery_s"), "{:.1f}"), _fmt(e.get("lost_items")))
    return table


def render(status: dict[str, Any], now: float | None = None) -> RenderableType:
    """The status as a header line and Actors / Replay / Learner / Events tables. ``now`` (unix seconds, default
    the current time) sets the ages and whether the file counts as STALE (older than 3 intervals while running)."""
    now = time.time() if now is None else now
    parts: list[RenderableType] = [_header(status, now)]
    for key, title in (("actors", "Actors"), ("replay", "Replay"), ("learner", "Learner")):
        if key not in status or status[key] is None:
            parts.append(Text(f"{title}: not reported yet", style="dim"))
        elif key == "actors":
            parts.append(_actors(_list(status[key])))
        else:
            parts.append((_replay if key == "replay" else _learner)(_dict(status[key]), now))
    events = _list(status.get("events"))
    if events:
        parts.append(_events(events, now))
    return Group(*parts)


def watch(run_dir: pathlib.Path, console: Console, refresh_s: float = 1.0, max_refreshes: int | None = None,
          clock: Callable[[], float] = time.time) -> None:
    """Show ``run_dir``'s status live, re-reading the file every ``refresh_s`` until Ctrl-C (or ``max_refreshes``).
    A read that fails after the first keeps the last good view with the error under it, since a run being
    restarted or a shared file system lagging should not end the watch."""
    status = read_status(run_dir)  # the first read's errors go to the caller
    with Live(render(status, clock()), console=console, auto_refresh=False) as live:
        n = 0
        while max_refreshes is None or n < max_refreshes:
            time.sleep(refresh_s)
            n += 1
            error: Text | None = None
            try:
                status = read_status(run_dir)
            except StatusError as exc:
                error = Text(f"could not re-read status: {exc}", style="bold red")
            view = render(status, clock())
            live.update(Group(view, error) if error is not None else view, refresh=True)
