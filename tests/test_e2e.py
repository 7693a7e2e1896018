"""End-to-end through the command line: real Ray, real Reverb, real MuJoCo; resume; eval; nothing left behind."""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import psutil
import pytest
import torch

from fleetrl.config import load_config

REPO = pathlib.Path(__file__).parents[1]
SMOKE = REPO / "configs" / "smoke.yaml"
RAY_MARKERS = ("raylet", "gcs_server", "ray::", "default_worker.py", "dashboard.py", "log_monitor.py")


def _ray_pids() -> set[int]:
    pids = set()
    for p in psutil.process_iter(["pid", "cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if any(m in cmd for m in RAY_MARKERS):
            pids.add(p.info["pid"])
    return pids


def _fleetrl(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, WANDB_MODE="offline", WANDB_SILENT="true")
    return subprocess.run([sys.executable, "-m", "fleetrl.cli", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)


def _rows(run_dir: pathlib.Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _latest(run_dir: pathlib.Path) -> dict:
    return json.loads((run_dir / "checkpoints" / "latest.json").read_text())


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A smoke run, then the same run resumed for more steps."""
    root = tmp_path_factory.mktemp("runs")
    before = _ray_pids()
    first = _fleetrl("train", "-c", str(SMOKE), f"run_root={root}")
    assert first.returncode == 0, first.stderr[-3000:]
    (run_dir,) = list(root.iterdir())
    first_rows, first_ckpt = _rows(run_dir), _latest(run_dir)
    first_data = torch.load(run_dir / "checkpoints" / first_ckpt["file"], weights_only=False)
    second = _fleetrl("train", "--resume", str(run_dir), "total_env_steps=2400")
    assert second.returncode == 0, second.stderr[-3000:]
    ckpt = _latest(run_dir)
    data = torch.load(run_dir / "checkpoints" / ckpt["file"], weights_only=False)
    return {"dir": run_dir, "first_rows": first_rows, "first_ckpt": first_ckpt, "rows": _rows(run_dir),
            "ckpt": ckpt, "before": before, "first_data": first_data, "data": data}


def test_metrics_file_has_live_progress(runs):
    rows = runs["first_rows"]
    assert len(rows) >= 2
    for key in ("env_steps", "env_steps_per_s", "learner_steps", "updates_per_s", "utd_ratio", "replay_size",
                "episode_return", "success_rate", "policy_lag"):
        assert key in rows[-1], key
    assert rows[-1]["env_steps"] >= 1200 and rows[-1]["learner_steps"] > 0
    assert [r["env_steps"] for r in rows] == sorted(r["env_steps"] for r in rows)
    assert (runs["dir"] / "wandb").is_dir()  # the offline wandb run sits in the run directory
    # The learner's weights reached the actors: they hold a published version, a bounded lag behind.
    assert rows[-1]["policy_version"] >= 0 and rows[-1]["policy_lag"] is not None
    assert 0 <= rows[-1]["policy_lag"] <= rows[-1]["learner_steps"]
    assert rows[-1]["weight_latency_s"] is not None


def test_rate_limiter_holds_update_to_data_ratio(runs):
    """The UTD the limiter holds: |updates - utd * (steps - min_size)| <= utd * rate_tolerance_steps plus the
    batches the sampler keeps in flight (2 per Reverb worker, 2 tf.data prefetch, prefetch_batches queued)."""
    cfg = load_config(SMOKE)
    ckpt = runs["first_ckpt"]
    steps_after_min = ckpt["env_steps"] - cfg.replay.min_size
    expected = cfg.replay.updates_per_step * steps_after_min
    slack = cfg.replay.updates_per_step * cfg.replay.rate_tolerance_steps + 2 * 4 + 2 + cfg.learner.prefetch_batches
    assert abs(ckpt["learner_steps"] - expected) <= slack, (ckpt, expected, slack)
    # At Reverb's level the invariant is exact: samples stay within the error buffer of the ratio.
    row = runs["first_rows"][-1]
    spi = cfg.replay.updates_per_step * cfg.learner.batch_size
    assert abs(row["replay_samples"] - spi * (row["replay_inserts"] - cfg.replay.min_size)) <= \
        spi * cfg.replay.rate_tolerance_steps


def test_checkpoint_written_and_loadable(runs):
    run_dir, ckpt, data = runs["dir"], runs["first_ckpt"], runs["first_data"]
    assert data["meta"]["learner_steps"] == ckpt["learner_steps"] > 0
    assert data["meta"]["config"]["name"] == "smoke"
    assert set(data["policy"]) and all(hasattr(v, "shape") for v in data["policy"].values())
    assert any((run_dir / "replay").iterdir())  # Reverb's table checkpoint


def _adam_steps(algorithm_state: dict) -> set[int]:
    return {int(v["step"]) for v in algorithm_state["critic_optim"]["state"].values()}


def test_resume_continues_counters(runs):
    first, second = runs["first_ckpt"], runs["ckpt"]
    # The optimiser continued too: its step count equals all updates of both starts, not of the second alone.
    assert _adam_steps(runs["first_data"]["algorithm"]) == {first["learner_steps"]}
    assert _adam_steps(runs["data"]["algorithm"]) == {second["learner_steps"]}
    assert second["generation"] == first["generation"] + 1
    assert second["learner_steps"] > first["learner_steps"]
    assert second["env_steps"] >= 2400 > first["env_steps"]
    resumed_rows = runs["rows"][len(runs["first_rows"]):]
    assert resumed_rows and resumed_rows[0]["env_steps"] >= first["env_steps"]
    assert resumed_rows[0]["learner_steps"] >= first["learner_steps"]
    # The replay came back from Reverb's checkpoint: the table was not empty at the restart.
    assert resumed_rows[0]["replay_size"] >= min(first["env_steps"], load_config(SMOKE).replay.capacity) - 1


def test_no_ray_or_reverb_process_left(runs):
    leftover = _ray_pids() - runs["before"]
    assert not leftover, [" ".join(psutil.Process(p).cmdline()[:3]) for p in leftover if psutil.pid_exists(p)]


def test_eval_reports_and_writes_video(runs, tmp_path):
    video = tmp_path / "episode.mp4"
    out = _fleetrl("eval", "--checkpoint", str(runs["dir"]), "--episodes", "2", "--video", str(video))
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["episodes"] == 2 and len(result["returns"]) == 2
    assert result["learner_steps"] == runs["ckpt"]["learner_steps"]
    assert 0.0 <= result["success_rate"] <= 1.0
    import imageio.v3 as iio

    frames = iio.imread(video)
    assert frames.shape[0] >= 2 and frames.shape[-1] == 3 and frames.std() > 0  # real, non-blank frames


def _tree_state(d: pathlib.Path) -> dict:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in d.rglob("*") if p.is_file()}


def test_resume_refusals_touch_nothing(runs, tmp_path):
    run_dir = runs["dir"]
    state = _tree_state(run_dir)
    out = _fleetrl("train", "--resume", str(tmp_path / "nope"))
    assert out.returncode == 2 and "no such run directory" in out.stderr
    out = _fleetrl("train", "--resume", str(run_dir), "learner.batch_size=32")
    assert out.returncode == 2 and "learner.batch_size" in out.stderr and "does not match" in out.stderr
    assert _tree_state(run_dir) == state


@pytest.mark.parametrize("override, named", [("actors.num_sims=3", "actors.num_sims"),
                                              ("env.id=NoSuchEnv-v0", "env.id")])
def test_config_error_fails_before_any_process(tmp_path, override, named):
    before = _ray_pids()
    out = _fleetrl("train", f"run_root={tmp_path}", override)
    assert out.returncode == 2 and named in out.stderr
    assert not any(tmp_path.iterdir())  # no run directory was created
    assert _ray_pids() - before == set()


# Both signals take the same handler (launcher._StopOnSignal); the SIGTERM run (~40 s) is `slow` to keep CI short.
@pytest.mark.parametrize("sig, to_group", [pytest.param(signal.SIGTERM, False, marks=pytest.mark.slow),
                                           (signal.SIGINT, True)])
def test_signal_stops_cleanly_with_final_checkpoint(tmp_path, sig, to_group):
    """SIGTERM to the driver, or Ctrl-C (SIGINT to the whole foreground process group, as a terminal sends it)
    mid-training: exit 0, a final checkpoint at the last update, no process left."""
    before = _ray_pids()
    env = dict(os.environ, WANDB_MODE="offline", WANDB_SILENT="true")
    proc = subprocess.Popen([sys.executable, "-m", "fleetrl.cli", "train", "-c", str(SMOKE), f"run_root={tmp_path}",
                             "total_env_steps=10000000", "checkpoint.every_updates=1000000", "logging.wandb=false"],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while True:  # wait until the learner has made updates
            metrics = list(tmp_path.glob("*/metrics.jsonl"))
            if metrics and any(json.loads(x)["learner_steps"] > 20 for x in metrics[0].read_text().splitlines()):
                break
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "training never started"
            time.sleep(0.5)
        if to_group:
            os.killpg(proc.pid, sig)
        else:
            proc.send_signal(sig)
        _, err = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-3000:]
    assert "stop requested" in err
    (run_dir,) = list(tmp_path.iterdir())
    rows = _rows(run_dir)
    ckpt = _latest(run_dir)
    # checkpoint.every_updates is out of reach, so this checkpoint is the final one written at shutdown.
    assert ckpt["learner_steps"] >= rows[-1]["learner_steps"] > 20
    assert _ray_pids() - before == set()
