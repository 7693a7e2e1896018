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


def test_camera_images_render_with_osmesa_as_well_as_egl(tmp_path):
    """The same camera image through Mesa's OSMesa backend (in a fresh process: the GL backend is fixed at
    import) matches the EGL one up to rasteriser differences."""
    import os
    import subprocess
    import sys

    import numpy as np

    code = ("import sys, numpy as np, gymnasium as gym, fleetrl.envs\n"
            "env = gym.make('fleetrl/WidowXLift-v0', image=True, image_size=64)\n"
            "obs, _ = env.reset(seed=4)\n"
            "np.save(sys.argv[1], obs['image'])\n")
    images = {}
    for backend in ("egl", "osmesa"):
        env = dict(os.environ, MUJOCO_GL=backend, PYOPENGL_PLATFORM=backend)
        path = tmp_path / f"{backend}.npy"
        subprocess.run([sys.executable, "-c", code, str(path)], env=env, check=True, timeout=120)
        images[backend] = np.load(path)
    for img in images.values():
        assert img.dtype == np.uint8 and img.shape == (64, 64, 3) and img.std() > 10
    diff = np.abs(images["egl"].astype(int) - images["osmesa"].astype(int))
    assert diff.mean() < 8, f"EGL and OSMesa pictures differ by {diff.mean():.1f} grey levels on average"
