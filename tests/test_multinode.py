"""A real multi-node Ray cluster on this machine (Ray's cluster utilities: a head and two workers, each its own
raylet) with custom resources, as ``cluster.yaml`` sets them up: placement follows the config, both launch routes
work (``fleetrl train --address`` and ``ray job submit``), and ``fleetrl status`` shows the live run.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import time

import pytest
from ray.cluster_utils import Cluster

from fleetrl.config import NodeSelector
from fleetrl.distributed.placement import node_matches
from fleetrl.testing import free_port

REPO = pathlib.Path(__file__).parents[1]
RAY = pathlib.Path(sys.executable).with_name("ray")
PLACEMENT = ["placement.learner.resources={learner_node: 1}", "placement.sim_actors.resources={sim_slot: 1}"]


@pytest.fixture(scope="module")
def cluster():
    """Head (learner_node, dashboard for jobs) + two sim workers (sim_slot) + a robot workstation (widowx_0)."""
    old = os.environ.get("RAY_AUTH_MODE")
    os.environ["RAY_AUTH_MODE"] = "disabled"  # a local test cluster; a real one propagates its token
    dashboard_port = free_port()
    c = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "resources": {"learner_node": 1}, "include_dashboard": True,
        "dashboard_port": dashboard_port, "dashboard_host": "127.0.0.1"})
    workers = [c.add_node(num_cpus=2, resources={"sim_slot": 2}) for _ in range(2)]
    workstation = c.add_node(num_cpus=1, resources={"widowx_0": 1})  # a robot workstation with one arm
    c.wait_for_nodes()
    yield {"cluster": c, "head": c.head_node.node_id, "workers": {w.node_id for w in workers},
           "workstation": workstation.node_id,
           "address": c.address, "dashboard": f"http://127.0.0.1:{dashboard_port}"}
    c.shutdown()
    if old is None:
        os.environ.pop("RAY_AUTH_MODE", None)
    else:
        os.environ["RAY_AUTH_MODE"] = old


def _env() -> dict[str, str]:
    return dict(os.environ, WANDB_MODE="offline", WANDB_SILENT="true", RAY_AUTH_MODE="disabled")


def test_node_matching_reads_resources_labels_and_gpus():
    node = {"Alive": True, "Resources": {"CPU": 4.0, "sim_slot": 2.0}, "Labels": {"fleetrl/role": "sim"}}
    assert node_matches(node, NodeSelector(resources={"sim_slot": 1}, labels={"fleetrl/role": "sim"}))
    assert not node_matches(node, NodeSelector(resources={"sim_slot": 3}))
    assert not node_matches(node, NodeSelector(labels={"fleetrl/role": "head"}))
    assert not node_matches(node, NodeSelector(), need_gpu=True)
    assert not node_matches({**node, "Alive": False}, NodeSelector())


def test_placement_pins_learner_and_replay_to_the_head_and_spreads_actors(cluster, tmp_path):
    proc = subprocess.Popen(
        [sys.executable, "-m", "fleetrl.cli", "train", "-c", str(REPO / "configs" / "smoke.yaml"),
         f"run_root={tmp_path}", "total_env_steps=1500", "logging.wandb=false", "logging.interval_s=0.5",
         *PLACEMENT, "--address", cluster["address"]],
        cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # While it runs, `fleetrl status` shows the live fleet.
        live = None
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            out = subprocess.run([sys.executable, "-m", "fleetrl.cli", "status", "--run", "smoke", "--run-root",
                                  str(tmp_path), "--json"], cwd=REPO, capture_output=True, text=True, timeout=60)
            if out.returncode == 0:
                doc = json.loads(out.stdout)
                if doc["state"] == "running" and all((a["env_steps"] or 0) > 0 for a in doc["actors"]):
                    live = doc
                    break
            time.sleep(1.0)
        assert live is not None, "no live status while the run was running"
        table = subprocess.run([sys.executable, "-m", "fleetrl.cli", "status", "--run", "smoke", "--run-root",
                                str(tmp_path), "--once"], cwd=REPO, capture_output=True, text=True, timeout=60)
        assert table.returncode == 0 and "online" in table.stdout and "learner" in table.stdout.lower()
        _, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-3000:]
    assert {a["health"] for a in live["actors"]} == {"ok"} and len(live["actors"]) == 2
    # Placement: learner and replay on the head (learner_node), actors only on sim_slot workers, one per worker.
    assert live["learner"]["node_id"] == cluster["head"]
    assert live["replay"]["node_id"] == cluster["head"]
    actor_nodes = [a["node_id"] for a in live["actors"]]
    assert set(actor_nodes) <= cluster["workers"]
    assert len(set(actor_nodes)) == 2, "SPREAD placed both actors on one worker"
    (run_dir,) = list(tmp_path.iterdir())
    final = json.loads((run_dir / "status.json").read_text())
    assert final["state"] == "stopped" and final["env_steps"] >= 1500
    # The cluster the run joined is still up: the driver disconnected instead of shutting it down.
    status = subprocess.run([str(RAY), "status", f"--address={cluster['address']}"], capture_output=True, text=True,
                            env=_env(), timeout=60)
    assert status.returncode == 0 and "CPU" in status.stdout, status.stderr[-2000:]


def test_placement_that_no_node_offers_is_refused_naming_the_key(cluster, tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "fleetrl.cli", "train", "-c", str(REPO / "configs" / "smoke.yaml"),
         f"run_root={tmp_path}", "logging.wandb=false", "placement.learner.resources={gpu_box: 1}",
         "placement.wait_for_nodes_s=0", "--address", cluster["address"]],
        cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
    assert out.returncode != 0
    assert "placement.learner" in out.stderr and "gpu_box" in out.stderr, out.stderr[-2000:]


@pytest.mark.slow  # the job-submit route (~50 s); the placement tests cover the same launcher in the default run
def test_ray_job_submit_route(cluster, tmp_path):
    """The job route of docs/cluster.md: the driver runs on the head as a Ray job and joins with --address auto."""
    entry = (f"{sys.executable} -m fleetrl.cli train -c {REPO / 'configs' / 'smoke.yaml'} run_root={tmp_path} "
             f"total_env_steps=800 logging.wandb=false logging.live=false "
             f"'placement.learner.resources={{learner_node: 1}}' 'placement.sim_actors.resources={{sim_slot: 1}}' "
             "--address auto")
    out = subprocess.run([str(RAY), "job", "submit", "--address", cluster["dashboard"], "--",
                          "bash", "-c", f"cd {REPO} && {entry}"],
                         env=_env(), capture_output=True, text=True, timeout=400)
    assert "succeeded" in (out.stdout + out.stderr).lower(), (out.stdout + out.stderr)[-3000:]
    (run_dir,) = list(tmp_path.iterdir())
    latest = json.loads((run_dir / "checkpoints" / "latest.json").read_text())
    assert latest["env_steps"] >= 800 and latest["learner_steps"] > 0


def test_robot_actor_runs_on_the_workstation_that_owns_its_robot(cluster, tmp_path):
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "fleetrl.cli", "robot-server", "--backend", "sim", "--port",
                               str(port)], cwd=REPO, env=dict(_env(), MUJOCO_GL=os.environ.get("MUJOCO_GL", "egl")),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out = subprocess.run(
            [sys.executable, "-m", "fleetrl.cli", "train", f"run_root={tmp_path}", "name=robotplace",
             "total_env_steps=300", "logging.wandb=false", "logging.live=false", "logging.interval_s=0.5",
             "env.id=fleetrl/WidowXReach-v0", "env.success=info", "env.max_episode_steps=20",
             "env.kwargs={privileged: false}", "actors.num_sim=1", "replay.min_size=64", "learner.batch_size=32",
             f"robots=[{{name: widowx_0, server: '127.0.0.1:{port}', resource: widowx_0, image: false, "
             "max_steps_per_s: 50}]", *PLACEMENT, "--address", cluster["address"]],
            cwd=REPO, env=_env(), capture_output=True, text=True, timeout=400)
    finally:
        server.terminate()
        server.wait(20)
    assert out.returncode == 0, out.stderr[-3000:]
    (run_dir,) = list(tmp_path.iterdir())
    status = json.loads((run_dir / "status.json").read_text())
    kinds = {a["kind"]: a for a in status["actors"]}
    assert kinds["robot"]["node_id"] == cluster["workstation"]  # pinned by its custom resource
    assert kinds["sim"]["node_id"] in cluster["workers"]
    assert kinds["robot"]["episodes"] > 0  # it wrote episodes from the served arm
