"""Shared fixtures: small specs and a real in-process Reverb server."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])
os.environ.setdefault("WANDB_SILENT", "true")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from fleetrl.types import ArraySpec, TransitionSpec  # noqa: E402


@pytest.fixture
def dict_spec() -> TransitionSpec:
    """Two observation keys (a vector and a small uint8 image) and a 2-D action."""
    return TransitionSpec(obs={"state": ArraySpec((3,), np.dtype(np.float32)),
                               "image": ArraySpec((4, 4, 3), np.dtype(np.uint8))},
                          action=ArraySpec((2,), np.dtype(np.float32)))


@pytest.fixture(scope="module")
def ray_local():
    """A local Ray instance for one test module (4 logical CPUs, one OpenMP thread per worker)."""
    import ray

    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"OMP_NUM_THREADS": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}})
    yield
    ray.shutdown()


@pytest.fixture
def one_torch_thread():
    """Tiny networks on a shared 2-core machine: extra intra-op threads only add sync cost (and spin badly when
    the machine is busy). Modules opt in with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
