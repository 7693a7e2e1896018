"""cluster.yaml is a cluster config Ray's own launcher accepts (`ray up` itself needs machines, not run here)."""

from __future__ import annotations

import copy
import pathlib

import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

CLUSTER_YAML = pathlib.Path(__file__).parents[1] / "cluster.yaml"


def test_cluster_yaml_passes_rays_validation():
    cfg = yaml.safe_load(CLUSTER_YAML.read_text())
    validate_config(prepare_config(copy.deepcopy(cfg)))
    assert any("make setup" in c for c in cfg["setup_commands"])  # every node installs fleetrl the README's way


def test_validation_would_catch_a_broken_file():
    cfg = yaml.safe_load(CLUSTER_YAML.read_text())
    cfg["head_start_ray_command"] = cfg.pop("head_start_ray_commands")  # a typo in a key
    with pytest.raises(Exception, match="head_start_ray_command"):
        validate_config(prepare_config(cfg))
