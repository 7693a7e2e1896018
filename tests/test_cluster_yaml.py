"""cluster.yaml (AWS) and cluster-local.yaml (on premises) are configs Ray's own launcher accepts, with the node types,
resources and install steps docs/cluster.md describes. `ray up` itself needs machines and is not run here; the start
commands are run against a stand-in `ray` that records its arguments."""

from __future__ import annotations

import copy
import json
import os
import pathlib
import re
import subprocess
import sys

import click
import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

from fleetrl.config import config_from_dict

REPO = pathlib.Path(__file__).parents[1]
CLOUD, LOCAL = REPO / "cluster.yaml", REPO / "cluster-local.yaml"
DOCS = REPO / "docs" / "cluster.md"
GPU_FAMILIES = ("g4dn.", "g5.", "g6.", "g6e.", "p3.", "p4d.", "p5.")


def _load(path: pathlib.Path) -> dict:
    return yaml.safe_load(path.read_text())


def _prepared(path: pathlib.Path) -> dict:
    cfg = prepare_config(copy.deepcopy(_load(path)))
    validate_config(cfg)
    return cfg


@pytest.mark.parametrize("path", [CLOUD, LOCAL], ids=lambda p: p.name)
def test_config_passes_rays_validation_and_installs_fleetrl(path):
    cfg = _prepared(path)
    raw = _load(path)
    # Every node installs fleetrl the README's way, in the checkout the file mounts put there.
    assert "cd ~/fleetrl && make setup" in raw["setup_commands"]
    assert raw["file_mounts"]["~/fleetrl"] == "."
    assert ".gitignore" in raw["rsync_filter"]  # the local .venv and runs/ are not shipped
    # Ray is started from the venv that make setup built, on the head and on the workers.
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        assert any("~/fleetrl/.venv/bin/ray start" in c for c in cfg[key]), key
    assert cfg["cluster_name"]


@pytest.mark.parametrize("path", [CLOUD, LOCAL], ids=lambda p: p.name)
def test_validation_would_catch_a_broken_file(path):
    cfg = _load(path)
    cfg["head_start_ray_command"] = cfg.pop("head_start_ray_commands")  # a typo in a key
    with pytest.raises(Exception, match="head_start_ray_command"):
        validate_config(prepare_config(cfg))


def test_cloud_node_types():
    cfg = _prepared(CLOUD)
    types = cfg["available_node_types"]
    head = types[cfg["head_node_type"]]
    assert head["resources"].get("learner_node") == 1
    assert head["node_config"]["InstanceType"].startswith(GPU_FAMILIES)
    assert "sim_slot" not in head["resources"]  # sim actors stay off the learner's node

    sim = types["sim_cpu"]
    assert 0 <= sim["min_workers"] < sim["max_workers"] <= cfg["max_workers"]
    assert sim["resources"].get("sim_slot", 0) >= 1
    assert not sim["node_config"]["InstanceType"].startswith(GPU_FAMILIES)

    robot = types["robot_workstation"]
    assert robot["min_workers"] == robot["max_workers"] == 0  # on premises: never launched by the autoscaler
    assert any(re.fullmatch(r"widowx_\d+", r) for r in robot["resources"])
    assert not {"sim_slot", "learner_node"} & set(robot["resources"])

    # Exactly one node type offers each role's resource.
    assert [n for n, t in types.items() if "learner_node" in t["resources"]] == [cfg["head_node_type"]]
    assert [n for n, t in types.items() if "sim_slot" in t["resources"]] == ["sim_cpu"]


def test_local_provider_cannot_take_node_types():
    """Why cluster-local.yaml sets resources on the `ray start` lines: Ray's local provider refuses node types."""
    cfg = _load(LOCAL)
    assert "available_node_types" not in cfg
    cfg["available_node_types"] = {"sim": {"resources": {"sim_slot": 4}, "node_config": {}}}
    with pytest.raises(click.ClickException, match="available_node_types"):
        prepare_config(cfg)


def _run_start_commands(path: pathlib.Path, home: pathlib.Path, which: str) -> list[dict]:
    """Run the config's env-file setup step and its head or worker start commands with HOME=home and a stand-in
    ~/fleetrl/.venv/bin/ray; returns one record (argv, RAY_AUTH_MODE) per `ray` call."""
    cfg = _load(path)
    stub = home / "fleetrl" / ".venv" / "bin" / "ray"
    stub.parent.mkdir(parents=True, exist_ok=True)
    stub.write_text(f"#!{sys.executable}\nimport json, os, sys\n"
                    "call = {'argv': sys.argv[1:], 'auth': os.environ.get('RAY_AUTH_MODE')}\n"
                    "with open(os.path.join(os.environ['HOME'], 'calls.jsonl'), 'a') as f:\n"
                    "    f.write(json.dumps(call) + '\\n')\n")
    stub.chmod(0o755)
    env_steps = [c for c in cfg["setup_commands"] if ".fleetrl_env" in c and "printf" in c]
    assert len(env_steps) == 1
    env = {"HOME": str(home), "PATH": os.environ["PATH"], "RAY_HEAD_IP": "10.9.8.7"}
    for cmd in env_steps + cfg[f"{which}_start_ray_commands"]:
        subprocess.run(["bash", "-c", cmd], env=env, check=True, capture_output=True, timeout=30)
    lines = (home / "calls.jsonl").read_text().splitlines()
    (home / "calls.jsonl").unlink()
    return [json.loads(line) for line in lines]


def _option(argv: list[str], name: str) -> str | None:
    values = [a.split("=", 1)[1] for a in argv if a.startswith(f"{name}=")]
    assert len(values) <= 1
    return values[0] if values else None


def test_local_start_commands_advertise_each_machines_resources(tmp_path):
    nproc = int(subprocess.run(["nproc"], capture_output=True, text=True, check=True).stdout)

    head = _run_start_commands(LOCAL, tmp_path, "head")
    assert [c["argv"][0] for c in head] == ["stop", "start"]
    start = head[-1]
    assert "--head" in start["argv"] and start["auth"] == "token"
    assert json.loads(_option(start["argv"], "--resources")) == {"learner_node": 1}

    # A sim machine: no per-machine file, so one sim_slot per CPU.
    sim = _run_start_commands(LOCAL, tmp_path, "worker")[-1]
    assert sim["argv"][0] == "start" and sim["auth"] == "token"
    assert _option(sim["argv"], "--address") == "10.9.8.7:6379"
    assert json.loads(_option(sim["argv"], "--resources")) == {"sim_slot": nproc}

    # A robot workstation: its own file names its arms (and no sim_slot).
    (tmp_path / ".fleetrl").mkdir()
    (tmp_path / ".fleetrl" / "node-resources.json").write_text('{"widowx_0": 1, "widowx_1": 1}\n')
    robot = _run_start_commands(LOCAL, tmp_path, "worker")[-1]
    assert json.loads(_option(robot["argv"], "--resources")) == {"widowx_0": 1, "widowx_1": 1}


def test_cloud_start_commands_join_the_head_with_token_auth(tmp_path):
    head = _run_start_commands(CLOUD, tmp_path, "head")[-1]
    assert head["argv"][0] == "start" and "--head" in head["argv"] and head["auth"] == "token"
    assert _option(head["argv"], "--port") == "6379"
    worker = _run_start_commands(CLOUD, tmp_path, "worker")[-1]
    assert worker["argv"][0] == "start" and worker["auth"] == "token"
    assert _option(worker["argv"], "--address") == "10.9.8.7:6379"
    # Cloud node types' resources reach `ray start` through RAY_OVERRIDE_RESOURCES, set by the launcher.
    assert _option(worker["argv"], "--resources") is None


def test_docs_placement_example_is_a_valid_config_that_fits_the_cluster():
    blocks = re.findall(r"```yaml\n(.*?)```", DOCS.read_text(), flags=re.S)
    (example,) = [b for b in blocks if "placement:" in b]
    cfg = config_from_dict(yaml.safe_load(example))  # fleetrl's own validation
    types = _prepared(CLOUD)["available_node_types"]
    offers = {name: t["resources"] for name, t in types.items()}
    fits = {name for name, res in offers.items()
            if all(res.get(k, 0) >= v for k, v in cfg.placement.learner.resources.items())}
    assert cfg.placement.learner.resources and fits == {"head_gpu"}
    fits = {name for name, res in offers.items()
            if all(res.get(k, 0) >= v for k, v in cfg.placement.sim_actors.resources.items())}
    assert cfg.placement.sim_actors.resources and fits == {"sim_cpu"}
    assert cfg.replay.port != 0  # a fixed Reverb port, as the firewall section asks


def test_docs_cover_cloud_on_prem_and_both_run_routes():
    text = DOCS.read_text()
    for needle in ("ray up cluster.yaml", "ray up cluster-local.yaml", "ray exec cluster.yaml", "ray attach",
                   "ray job submit", "--address auto", "--address http://", "make setup", "replay.port", "6379",
                   "8265", "RAY_AUTH_MODE=token", "--resources='{\"widowx_0\": 1", "run_root"):
        assert needle in text, needle
