"""Config loading: defaults, YAML files, overrides, and errors that name the offending key."""

from __future__ import annotations

import dataclasses

import pytest

from fleetrl.config import ConfigError, load_config


def test_defaults_are_valid_and_frozen():
    cfg = load_config()
    assert cfg.actors.num_sim == 2
    assert cfg.learner.batch_size == 256
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.actors.num_sim = 3  # type: ignore[misc]


def test_yaml_then_overrides(tmp_path):
    f = tmp_path / "x.yaml"
    f.write_text("actors:\n  num_sim: 3\nlearner:\n  batch_size: 64\n  sac:\n    hidden_dims: [32, 32]\n")
    cfg = load_config(f, ["actors.num_sim=4", "learner.sac.gamma=0.9"])
    assert cfg.actors.num_sim == 4  # the override wins over the file
    assert cfg.learner.batch_size == 64
    assert cfg.learner.sac.hidden_dims == (32, 32)
    assert cfg.learner.sac.gamma == pytest.approx(0.9)


@pytest.mark.parametrize("overrides, key", [
    (["actors.num_simm=3"], "actors.num_simm"),
    (["learner.batch_size=abc"], "learner.batch_size"),
    (["learner.batch_size=0"], "learner.batch_size"),
    (["learner.sac.gamma=1.5"], "learner.sac.gamma"),
    (["env.success=sometimes"], "env.success"),
    (["bogus_section.x=1"], "bogus_section"),
    (["replay.min_size=10", "learner.batch_size=64"], "replay.min_size"),
    (["learner.sac.num_critics=2", "learner.sac.critic_subsample=3"], "critic_subsample"),
])
def test_errors_name_the_key(overrides, key):
    with pytest.raises(ConfigError) as err:
        load_config(None, overrides)
    assert key in str(err.value)


def test_allowed_values_are_listed():
    with pytest.raises(ConfigError, match="'info' or 'survive'"):
        load_config(None, ["env.success=sometimes"])
    with pytest.raises(ConfigError, match=r"actors.num_simm: unknown key \(known keys here: num_sim, "):
        load_config(None, ["actors.num_simm=3"])


def test_bad_override_syntax_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        load_config(None, ["actors.num_sim"])
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(bad)


def test_override_into_a_value_is_refused():
    with pytest.raises(ConfigError, match="actors.num_sim"):
        load_config(None, ["actors.num_sim.x=1"])


def test_shipped_configs_load():
    import pathlib

    files = sorted(pathlib.Path(__file__).parents[1].joinpath("configs").glob("*.yaml"))
    assert files, "configs/ has no YAML files"
    for f in files:
        load_config(f)


def test_null_time_limit_keeps_the_envs_own():
    """``env.max_episode_steps: null`` leaves the registered limit (a WidowX task's Bridge-like length)."""
    import fleetrl.envs  # noqa: F401
    from fleetrl.envs.gym_adapter import make_env

    cfg = load_config(None, ["env.id=fleetrl/WidowXLift-v0", "env.success=info", "env.max_episode_steps=null"])
    assert cfg.env.max_episode_steps is None
    env = make_env(cfg.env)
    try:
        assert env.spec.max_episode_steps == 80
    finally:
        env.close()
    env = make_env(load_config(None, ["env.id=fleetrl/WidowXLift-v0", "env.max_episode_steps=7"]).env)
    try:
        assert env.spec.max_episode_steps == 7
    finally:
        env.close()


def test_robots_and_placement_sections_are_validated_and_map_to_ray_options():
    from fleetrl.distributed.placement import robot_actor_options, sim_actor_options

    cfg = load_config(None, ["robots=[{name: w0, server: 'lab:5556', resource: widowx_0}, "
                             "{name: w1, server: 'lab:5557', labels: {robot: w1}}]",
                             "placement.sim_actors.resources={sim_slot: 1}", "placement.spread_sim_actors=false"])
    assert robot_actor_options(cfg.robots[0]) == {"num_cpus": 1, "resources": {"widowx_0": 1}}
    assert robot_actor_options(cfg.robots[1])["label_selector"] == {"robot": "w1"}
    assert sim_actor_options(cfg) == {"resources": {"sim_slot": 1}, "scheduling_strategy": "DEFAULT"}
    with pytest.raises(ConfigError, match="names must be unique"):
        load_config(None, ["robots=[{name: a, server: 'h:1'}, {name: a, server: 'h:2'}]"])
    with pytest.raises(ConfigError, match="robots.0.server"):
        load_config(None, ["robots=[{name: a}]"])
    with pytest.raises(ConfigError, match="custom resources need a positive amount"):
        load_config(None, ["placement.learner.resources={GPU: 1}"])
