"""The robosuite Lift expert (real robosuite physics): it lifts the cube at noise 0, its mixed noise gives a
mixed-quality dataset, and ``fleetrl collect``'s scripted policy uses it."""

from __future__ import annotations

import numpy as np
import pytest

from fleetrl.datasets.sources import open_dataset
from fleetrl.envs.robosuite_expert import MIXED_NOISE, RobosuiteLiftExpert
from fleetrl.envs.rollout import RolloutError, collect
from tests.test_widowx_experts import expert_success_rate

LIFT = "fleetrl/Robosuite-Lift-v0"


def _success_rate(noise: float, seeds) -> tuple[float, list[int]]:
    return expert_success_rate(LIFT, RobosuiteLiftExpert(noise), seeds)


def test_the_lift_expert_lifts_the_cube_at_noise_zero():
    rate, lengths = _success_rate(0.0, range(6))
    assert rate == 1.0
    assert max(lengths) < 60  # a proficient lift: robomimic's human demos average ~50 steps


@pytest.mark.slow  # ~30 s of robosuite steps
def test_the_mixed_noise_gives_a_mixed_quality_dataset():
    rate, _ = _success_rate(MIXED_NOISE["Lift"], range(30))
    assert 0.3 <= rate <= 0.65, f"success {rate:.0%} at noise {MIXED_NOISE['Lift']}"


def test_noise_is_seeded_and_bounded():
    obs = {"state": np.array([0.0, 0.0, 1.0, 0.1, -0.2, 0.0, 1.0], np.float32),
           "object": np.array([0.02, 0.01, 0.83, 0, 0, 0, 1, 0, 0, 0], np.float32)}
    clean = RobosuiteLiftExpert(0.0, seed=1).act(obs)
    assert np.array_equal(clean, RobosuiteLiftExpert(0.0, seed=2).act(obs))
    assert clean[2] < 0 and clean[6] == 1.0  # above the cube, open: move down towards the hover point
    np.testing.assert_allclose(clean[3:5], [-0.1, 0.2], atol=1e-6)  # the wrist turns back to pointing down
    a, b, c = (RobosuiteLiftExpert(0.5, seed=s) for s in (7, 7, 8))
    assert np.array_equal(a.act(obs), b.act(obs))
    assert not np.array_equal(a.act(obs), c.act(obs))
    assert np.all(np.abs(a.act(obs)) <= 1.0)
    with pytest.raises(ValueError, match="noise"):
        RobosuiteLiftExpert(-0.1)


def test_collect_writes_lift_demonstrations_and_refuses_an_env_without_object_state(tmp_path):
    summary = collect(LIFT, 2, tmp_path / "lift.h5", policy="scripted", seed=3)
    episodes = list(open_dataset(str(tmp_path / "lift.h5")))
    assert summary["episodes"] == 2 and [e.is_success for e in episodes] == [True, True]
    assert all(e.length < 60 and e.observations["object"].shape[1] == 10 for e in episodes)
    with pytest.raises(RolloutError, match="privileged"):
        collect(LIFT, 1, tmp_path / "blind.h5", policy="scripted", privileged=False)
    assert not (tmp_path / "blind.h5").exists()
