"""The shipped policy: the numpy fast path equals the torch module, also after copies and weight loads."""

from __future__ import annotations

import copy

import numpy as np

from fleetrl.learners.policy import GaussianPolicy


def test_numpy_path_matches_torch(dict_spec):
    policy = GaussianPolicy(dict_spec, (32, 32), seed=0)
    rng = np.random.default_rng(0)
    for _ in range(20):
        obs = {"state": rng.normal(size=3).astype(np.float32), "image": np.zeros((4, 4, 3), np.uint8)}
        np.testing.assert_allclose(policy.act(obs, deterministic=True), policy.act_torch(obs, deterministic=True),
                                   rtol=1e-5, atol=1e-6)
        a = policy.act(obs)
        assert a.shape == (2,) and a.dtype == np.float32 and np.all(np.abs(a) < 1)


def test_copy_then_load_uses_new_weights(dict_spec):
    source = GaussianPolicy(dict_spec, (32, 32), seed=1)
    template = GaussianPolicy(dict_spec, (32, 32), seed=2)
    obs = {"state": np.ones(3, np.float32), "image": np.zeros((4, 4, 3), np.uint8)}
    fresh = copy.deepcopy(template)  # what the weight subscriber does for every new version
    fresh.load_weights({k: v.numpy() for k, v in source.actor.state_dict().items()})
    np.testing.assert_allclose(fresh.act(obs, deterministic=True), source.act(obs, deterministic=True), rtol=1e-6)
    assert not np.allclose(template.act(obs, deterministic=True), source.act(obs, deterministic=True))


def test_stochastic_actions_vary_and_repeat_with_seed(dict_spec):
    obs = {"state": np.zeros(3, np.float32), "image": np.zeros((4, 4, 3), np.uint8)}
    a, b = GaussianPolicy(dict_spec, (16,), seed=3), GaussianPolicy(dict_spec, (16,), seed=3)
    b.load_weights({k: v.numpy() for k, v in a.actor.state_dict().items()})
    xs = [a.act(obs) for _ in range(5)]
    ys = [b.act(obs) for _ in range(5)]
    np.testing.assert_array_equal(xs, ys)
    assert len({x.tobytes() for x in xs}) == 5


def test_copies_continue_the_exploration_noise(dict_spec):
    """A weight update must not restart the noise: the subscriber deep-copies its template for every version."""
    obs = {"state": np.zeros(3, np.float32), "image": np.zeros((4, 4, 3), np.uint8)}
    template = GaussianPolicy(dict_spec, (16,), seed=4)
    weights = {k: v.numpy().copy() for k, v in template.actor.state_dict().items()}
    draws = []
    for _ in range(4):  # four "versions" with identical weights: identical noise would mean a restarted stream
        policy = copy.deepcopy(template)
        policy.load_weights(weights)
        draws.append(policy.act(obs).tobytes())
    assert len(set(draws)) == 4


def test_algorithms_and_env_loop_import_neither_ray_nor_reverb():
    """Pure parts stay pure: importing them (and everything they import) loads neither Ray nor Reverb."""
    import subprocess
    import sys

    code = ("import sys, fleetrl.learners, fleetrl.learners.sac, fleetrl.actors.env_loop, fleetrl.envs.gym_adapter; "
            "print(sorted(m for m in ('ray', 'reverb', 'tensorflow') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
