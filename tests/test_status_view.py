"""``fleetrl status`` and :mod:`fleetrl.status_view`: finding a run, reading its ``status.json``, the rendered view
(actors, replay tables, learner, events, STALE), the live loop re-reading the file, and the CLI's ``--once`` /
``--json``. No Ray: the status files are written by the tests."""

from __future__ import annotations

import copy
import io
import json
import pathlib
import re

import pytest
from rich.console import Console
from typer.testing import CliRunner

import fleetrl.status_view as sv
from fleetrl.cli import app

NOW = 1763700000.0

STATUS: dict = {
    "version": 1, "run": "default-20261121-120000", "run_dir": "/abs/path", "updated_at": NOW - 1.0,
    "started_at": NOW - 1000.0, "interval_s": 2.0, "state": "running", "env_steps": 12345, "total_env_steps": 25000,
    "actors": [
        {"id": 0, "kind": "sim", "node": "10.0.0.2", "health": "ok", "restarts": 0, "env_steps": 6000,
         "env_steps_per_s": 210.5, "policy_version": 1200, "policy_lag": 30, "episodes": 40,
         "intervention_rate": 0.0, "success_rate": 0.5, "episode_return": 120.0},
        {"id": 1, "kind": "real", "node": "10.0.0.3", "health": "restarting", "restarts": 2, "env_steps": 6345,
         "env_steps_per_s": 99.25, "policy_version": 1187, "policy_lag": 43, "episodes": 7,
         "intervention_rate": 0.125, "success_rate": 0.25, "episode_return": 80.0},
    ],
    "replay": {"node": "10.0.0.1", "health": "ok", "restarts": 1, "address": "10.0.0.1:40001", "lost_items": 17,
               "last_checkpoint": {"path": "/ckpt/reverb", "time": NOW - 12.0},
               "tables": [{"name": "online", "size": 5000, "max_size": 200000, "inserts_per_s": 400.0,
                           "samples_per_s": 102400.0, "rate_limiter": "filling (500/1000)"}]},
    "learner": {"node": "10.0.0.1", "device": "cuda:0", "health": "ok", "restarts": 0, "learner_steps": 4000,
                "updates_per_s": 60.2, "utd_ratio": 0.98, "utd_target": 1.0, "policy_version": 4000,
                "last_checkpoint": {"path": "/ckpt/l", "learner_steps": 3000, "env_steps": 9000, "time": NOW - 30.0}},
    "events": [{"time": NOW - 100.0 + i, "component": f"actor {i}", "what": f"event-{i}", "action": "restarted",
                "recovery_s": 3.1, "lost_items": None} for i in range(7)],
}


def _text(status: dict, now: float = NOW) -> str:
    console = Console(record=True, width=200, file=io.StringIO())
    console.print(sv.render(status, now))
    return console.export_text()


def _line(text: str, *needles: str) -> str:
    """The one output line containing all ``needles`` (fails if none or several)."""
    lines = [ln for ln in text.splitlines() if all(n in ln for n in needles)]
    assert len(lines) == 1, (needles, text)
    return lines[0]


def _cells(line: str) -> list[str]:
    return [c.strip() for c in re.split(r"[│┃]", line)[1:-1]]


def _write(run_dir: pathlib.Path, status: dict) -> pathlib.Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / sv.STATUS_FILE).write_text(json.dumps(status, indent=1))
    return run_dir


# --- find_run -------------------------------------------------------------------------------------------------


@pytest.fixture
def run_root(tmp_path: pathlib.Path) -> pathlib.Path:
    root = tmp_path / "runs"
    # Creation order differs from timestamp order, so "newest" cannot come from mtimes or listing order.
    for name in ("default-20261121-120000-2", "default-20261121-120000", "default-20251231-235959",
                 "default-extra-20300101-000000", "other-20261122-080000"):
        (root / name).mkdir(parents=True)
    (root / "notes.txt").write_text("not a run")
    return root


def test_find_run_exact_directory_name(run_root: pathlib.Path) -> None:
    assert sv.find_run("default-20251231-235959", run_root) == run_root / "default-20251231-235959"


def test_find_run_name_picks_newest_by_timestamp_and_suffix(run_root: pathlib.Path) -> None:
    assert sv.find_run("default", run_root) == run_root / "default-20261121-120000-2"
    # A name with hyphens is matched whole: "default-extra" runs are not "default" runs, and vice versa.
    assert sv.find_run("default-extra", run_root) == run_root / "default-extra-20300101-000000"
    assert sv.find_run("other", str(run_root)) == run_root / "other-20261122-080000"


def test_find_run_path(run_root: pathlib.Path, tmp_path: pathlib.Path) -> None:
    elsewhere = tmp_path / "elsewhere" / "myrun"
    elsewhere.mkdir(parents=True)
    assert sv.find_run(str(elsewhere), run_root) == elsewhere  # a path ignores run_root
    with pytest.raises(sv.StatusError, match="no such run directory"):
        sv.find_run(str(tmp_path / "missing"), run_root)


def test_find_run_not_found_lists_existing_runs(run_root: pathlib.Path) -> None:
    with pytest.raises(sv.StatusError) as info:
        sv.find_run("nope", run_root)
    msg = str(info.value)
    assert "nope" in msg and str(run_root / "nope") in msg and "nope-YYYYmmdd-HHMMSS" in msg
    listed = msg.split("(newest first): ")[1].split(", ")
    assert listed == ["default-extra-20300101-000000", "other-20261122-080000", "default-20261121-120000-2",
                      "default-20261121-120000", "default-20251231-235959"]
    assert "notes.txt" not in msg


def test_find_run_missing_root(tmp_path: pathlib.Path) -> None:
    with pytest.raises(sv.StatusError, match="does not exist"):
        sv.find_run("default", tmp_path / "no-runs-here")


# --- read_status ----------------------------------------------------------------------------------------------


def test_read_status_round_trip_and_errors(tmp_path: pathlib.Path) -> None:
    run_dir = _write(tmp_path / "r", STATUS)
    assert sv.read_status(run_dir) == STATUS
    (tmp_path / "empty").mkdir()
    with pytest.raises(sv.StatusError, match=r"has not written status yet .*logging\.interval_s"):
        sv.read_status(tmp_path / "empty")
    (run_dir / sv.STATUS_FILE).write_text('{"version": 1, "actors": [')
    with pytest.raises(sv.StatusError, match=r"status\.json: not valid JSON") as info:
        sv.read_status(run_dir)
    assert str(run_dir / sv.STATUS_FILE) in str(info.value)
    (run_dir / sv.STATUS_FILE).write_text("[1, 2]")
    with pytest.raises(sv.StatusError, match="expected a JSON object"):
        sv.read_status(run_dir)


# --- render ---------------------------------------------------------------------------------------------------


def test_render_actor_rows() -> None:
    text = _text(STATUS)
    header = ["id", "kind", "node", "health", "restarts", "env steps", "steps/s", "policy ver", "lag", "episodes",
              "intervention", "success", "return"]
    assert _cells(_line(text, "intervention", "lag")) == header
    assert _cells(_line(text, "10.0.0.2")) == ["0", "sim", "10.0.0.2", "ok", "0", "6,000", "210.5", "1,200", "30",
                                                "40", "0.0%", "50.0%", "120.00"]
    assert _cells(_line(text, "10.0.0.3")) == ["1", "real", "10.0.0.3", "restarting", "2", "6,345", "99.2", "1,187",
                                                "43", "7", "12.5%", "25.0%", "80.00"]
    assert "Actors (1 ok, 1 restarting)" in text
    assert "total 309.8 env steps/s" in text


def test_render_replay_and_learner() -> None:
    text = _text(STATUS)
    assert _cells(_line(text, "online")) == ["online", "5,000", "200,000", "400.0", "102,400.0", "filling (500/1000)"]
    replay = _line(text, "10.0.0.1:40001")
    assert "health ok" in replay and "restarts 1" in replay and "lost items 17" in replay
    assert "last checkpoint 12 s ago" in replay
    assert _cells(_line(text, "cuda:0")) == ["10.0.0.1", "cuda:0", "ok", "0", "4,000", "60.2", "0.98 / 1.00", "4,000",
                                             "30 s ago (step 3,000, env 9,000)"]


def test_render_header_and_last_events() -> None:
    text = _text(STATUS)
    header = text.splitlines()[0]
    assert "default-20261121-120000" in header and "running" in header
    assert "12,345 / 25,000" in header and "updated 1 s ago" in header and "started 17 min ago" in header
    assert "Events (last 5 of 7)" in text
    shown = re.findall(r"event-\d", text)
    assert shown == [f"event-{i}" for i in range(2, 7)]  # the newest five, oldest first


def test_render_stale_only_when_running_and_old() -> None:
    assert "STALE" not in _text(STATUS, NOW + 5.0)  # 6 s old: within 3 intervals of 2 s
    stale = _text(STATUS, NOW + 6.0)  # 7 s old
    assert "STALE" in stale and "no update for 7 s" in stale
    slow = dict(STATUS, interval_s=10.0)
    assert "STALE" not in _text(slow, NOW + 6.0)
    assert "STALE" in _text(slow, NOW + 40.0)
    for state in ("stopped", "failed"):  # a finished run's file is old by design
        assert "STALE" not in _text(dict(STATUS, state=state), NOW + 3600.0)


def test_render_nulls_as_dashes() -> None:
    status = copy.deepcopy(STATUS)
    for key in ("env_steps_per_s", "policy_lag", "intervention_rate", "success_rate", "episode_return"):
        status["actors"][0][key] = None
    status["learner"]["updates_per_s"] = None
    status["learner"]["last_checkpoint"] = None
    status["replay"]["tables"][0]["samples_per_s"] = None
    status["env_steps"] = None
    text = _text(status)
    assert _cells(_line(text, "10.0.0.2")) == ["0", "sim", "10.0.0.2", "ok", "0", "6,000", "–", "1,200", "–", "40",
                                                "–", "–", "–"]
    assert _cells(_line(text, "cuda:0"))[5] == "–"
    assert _cells(_line(text, "cuda:0"))[8] == "none yet"
    assert _cells(_line(text, "online"))[4] == "–"
    assert "env steps – / 25,000" in text


def test_render_tolerates_missing_sections_and_unknown_keys() -> None:
    status = {"run": "partial", "state": "running", "updated_at": NOW, "interval_s": 2.0, "future_section": {"x": 1},
              "actors": [dict(STATUS["actors"][0], new_field=[1, 2])], "replay": {"tables": [{"name": "online"}]}}
    text = _text(status)
    assert "10.0.0.2" in text and "Learner: not reported yet" in text
    assert _cells(_line(text, "online")) == ["online", "–", "–", "–", "–", "–"]
    assert "future_section" not in text and "new_field" not in text
    assert "Actors: not reported yet" in _text({"state": "running"})


def test_render_does_not_interpret_markup_in_values() -> None:
    status = copy.deepcopy(STATUS)
    status["events"] = [{"time": NOW, "component": "[bold]actor 0[/]", "what": "died", "action": "restarted"}]
    assert "[bold]actor 0[/]" in _text(status)


def test_age_units() -> None:
    assert sv.age(NOW - 12.4, NOW) == "12 s ago"
    assert sv.age(NOW - 300, NOW) == "5 min ago"
    assert sv.age(NOW - 3 * 3600, NOW) == "3.0 h ago"
    assert sv.age(NOW + 2, NOW) == "0 s ago"  # writer's clock slightly ahead
    assert sv.age(None, NOW) == "–"


# --- live loop ------------------------------------------------------------------------------------------------


def test_watch_rereads_the_file(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run_dir = _write(tmp_path / "r", STATUS)
    updated = copy.deepcopy(STATUS)
    updated["learner"]["updates_per_s"] = 77.7
    steps = iter([lambda: _write(run_dir, updated), lambda: (run_dir / sv.STATUS_FILE).unlink()])
    monkeypatch.setattr(sv.time, "sleep", lambda s: next(steps)())  # each refresh: the driver changes the file
    out = io.StringIO()
    sv.watch(run_dir, Console(file=out, force_terminal=True, width=200), refresh_s=0, max_refreshes=2,
             clock=lambda: NOW)
    text = out.getvalue()
    assert "60.2" in text and "77.7" in text
    # A failed re-read keeps the last good view with the error under it.
    assert "could not re-read status" in text and "has not written status yet" in text


# --- CLI ------------------------------------------------------------------------------------------------------


def test_cli_once_and_json(tmp_path: pathlib.Path) -> None:
    root = tmp_path / "runs"
    _write(root / "default-20261121-120000", STATUS)
    runner = CliRunner()
    result = runner.invoke(app, ["status", "--run", "default", "--run-root", str(root), "--once"])
    assert result.exit_code == 0, result.output
    assert "10.0.0.3" in result.stdout and "filling (500/1000)" in result.stdout and "60.2" in result.stdout
    result = runner.invoke(app, ["status", "--run", str(root / "default-20261121-120000"), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == STATUS


def test_cli_errors_exit_2(tmp_path: pathlib.Path) -> None:
    root = tmp_path / "runs"
    (root / "default-20261121-120000").mkdir(parents=True)
    runner = CliRunner()
    result = runner.invoke(app, ["status", "--run", "nope", "--run-root", str(root), "--once"])
    assert result.exit_code == 2
    assert "default-20261121-120000" in result.stderr and result.stdout == ""
    for flag in ("--once", "--json"):
        result = runner.invoke(app, ["status", "--run", "default", "--run-root", str(root), flag])
        assert result.exit_code == 2
        assert "has not written status yet" in result.stderr and result.stdout == ""
