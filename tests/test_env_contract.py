"""The env contract checker over every env fleetrl registers (spaces, seeding, randomised resets, no NaN, no
aliasing, headless rendering)."""

from __future__ import annotations

import pytest

from fleetrl.envs.check_env import check_registered
from fleetrl.envs.registry import WIDOWX_IDS, fleet_env_ids


@pytest.mark.parametrize("env_id", fleet_env_ids())
def test_registered_env_honours_the_contract(env_id):
    report = check_registered(env_id, steps=30)
    assert report.steps > 0
    # Only the skips we expect: robosuite envs truncate at their own horizon and have no registered limit.
    for note in report.notes:
        assert "Robosuite" in env_id and "horizon" in note, note


@pytest.mark.parametrize("env_id", sorted(WIDOWX_IDS.values()))
def test_widowx_env_with_camera_images_honours_the_contract(env_id):
    check_registered(env_id, steps=10, image=True, wrist_image=True, image_size=64)


def test_robosuite_env_with_camera_images_honours_the_contract():
    check_registered("fleetrl/Robosuite-Lift-v0", steps=10, image_size=64)
