"""`fleetrl train --address` joins a Ray cluster it did not start, and leaves that cluster running."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import psutil
import pytest
from test_e2e import _ray_pids

from fleetrl.testing import free_port

REPO = pathlib.Path(__file__).parents[1]
RAY = pathlib.Path(sys.executable).with_name("ray")


@pytest.fixture
def ray_head():
    """A real single-node Ray cluster started with `ray start --head`, as on a cluster's head machine."""
    port = free_port()
    # A local test cluster without Ray's token authentication (a real cluster propagates its token instead).
    env = dict(os.environ, RAY_AUTH_MODE="disabled")
    before = _ray_pids()
    subprocess.run([str(RAY), "start", "--head", f"--port={port}", "--num-cpus=4", "--include-dashboard=false",
                    "--disable-usage-stats"], check=True, capture_output=True, env=env, timeout=120)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        # Stop only the processes this fixture started (`ray stop` would end every Ray cluster on the machine).
        procs = [psutil.Process(p) for p in _ray_pids() - before if psutil.pid_exists(p)]
        for p in procs:
            p.terminate()
        _, alive = psutil.wait_procs(procs, timeout=5)  # some Ray daemons ignore SIGTERM: do not wait long
        for p in alive:
            p.kill()
        # `ray start` records the cluster for later `ray.init()` calls; forget it as `ray stop` would.
        current = pathlib.Path("/tmp/ray/ray_current_cluster")
        if current.is_file() and str(port) in current.read_text():
            current.unlink()


@pytest.mark.slow  # ~40 s, make test-all
def test_default_train_ignores_the_running_cluster(ray_head, tmp_path):
    """Without --address, fleetrl starts its own embedded Ray even while another cluster runs on the machine."""
    env = dict(os.environ, WANDB_MODE="offline", WANDB_SILENT="true", RAY_AUTH_MODE="disabled")
    out = subprocess.run([sys.executable, "-m", "fleetrl.cli", "train", "-c", str(REPO / "configs" / "smoke.yaml"),
                          f"run_root={tmp_path}", "total_env_steps=400", "logging.wandb=false"],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    status = subprocess.run([str(RAY), "status", f"--address={ray_head}"], capture_output=True, text=True, env=env,
                            timeout=60)
    assert status.returncode == 0, status.stderr[-2000:]  # the other cluster is untouched


# ~48 s, make test-all. The default run joins a cluster in tests/test_multinode.py (--address, then the cluster is
# checked to be still up); this one joins a cluster started by `ray start --head`, as on a head machine.
@pytest.mark.slow
def test_train_joins_an_existing_cluster(ray_head, tmp_path):
    env = dict(os.environ, WANDB_MODE="offline", WANDB_SILENT="true", RAY_AUTH_MODE="disabled")
    out = subprocess.run([sys.executable, "-m", "fleetrl.cli", "train", "-c", str(REPO / "configs" / "smoke.yaml"),
                          f"run_root={tmp_path}", "total_env_steps=600", "logging.wandb=false",
                          "--address", ray_head], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    (run_dir,) = list(tmp_path.iterdir())
    latest = json.loads((run_dir / "checkpoints" / "latest.json").read_text())
    assert latest["env_steps"] >= 600 and latest["learner_steps"] > 0
    # The cluster the run joined is still up: the driver disconnected instead of shutting it down.
    status = subprocess.run([str(RAY), "status", f"--address={ray_head}"], capture_output=True, text=True, env=env,
                            timeout=60)
    assert status.returncode == 0 and "CPU" in status.stdout, status.stderr[-2000:]
