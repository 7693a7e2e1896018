"""Tests of the RLPD-style SAC learner, its networks and the shipped GaussianPolicy (CPU, a few seconds)."""

from __future__ import annotations

import math
import pathlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fleetrl.config import EncoderConfig, SACConfig
from fleetrl.core import Algorithm, Policy
from fleetrl.learners import SAC, CriticEnsemble, GaussianPolicy, TanhGaussianActor, obs_vector
from fleetrl.types import ArraySpec, TransitionBatch, TransitionSpec

F32 = np.dtype(np.float32)
SPEC = TransitionSpec(obs={"state": ArraySpec((3,), F32)}, action=ArraySpec((2,), F32))
SMALL = (32, 32)

CONFIGS = {
    "default": SACConfig(hidden_dims=SMALL),
    "redq": SACConfig(hidden_dims=SMALL, num_critics=10, critic_subsample=2, critic_layer_norm=True),
    "no_backup_entropy": SACConfig(hidden_dims=SMALL, num_critics=3, backup_entropy=False, target_entropy=-0.5),
}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def random_batch(batch_size: int = 64, seed: int = 0, discount: float | None = None) -> TransitionBatch:
    """A batch with every TransitionBatch field, as the learner receives it (torch tensors)."""
    g = torch.Generator().manual_seed(seed)
    terminated = torch.rand(batch_size, generator=g) < 0.2
    disc = (~terminated).float() if discount is None else torch.full((batch_size,), float(discount))
    return TransitionBatch(
        obs={"state": torch.rand(batch_size, 3, generator=g) * 2 - 1},
        action=torch.rand(batch_size, 2, generator=g) * 2 - 1,
        reward=torch.randn(batch_size, generator=g),
        discount=disc,
        terminated=terminated,
        truncated=torch.zeros(batch_size, dtype=torch.bool),
        next_obs={"state": torch.rand(batch_size, 3, generator=g) * 2 - 1},
        mc_return=torch.randn(batch_size, generator=g),
        is_intervention=torch.zeros(batch_size, dtype=torch.bool),
        policy_version=torch.zeros(batch_size, dtype=torch.int64),
        actor_id=torch.zeros(batch_size, dtype=torch.int32),
        episode_id=torch.arange(batch_size, dtype=torch.int64),
    )


def _grads(params: list[torch.Tensor]) -> list[torch.Tensor | None]:
    return [p.grad for p in params]


def _assert_grads(sac: SAC, *, actor: bool, critic: bool, alpha: bool) -> None:
    for name, params, expected in [
        ("actor", list(sac.actor.parameters()), actor),
        ("critic", list(sac.critic.parameters()), critic),
        ("log_alpha", [sac.log_alpha], alpha),
    ]:
        for p, grad in zip(params, _grads(params), strict=True):
            if expected:
                assert grad is not None, f"{name} param {tuple(p.shape)} got no gradient"
                assert grad.abs().sum() > 0, f"{name} param {tuple(p.shape)} got an all-zero gradient"
            else:
                assert grad is None, f"{name} param {tuple(p.shape)} got a gradient it must not get"
    assert all(p.grad is None for p in sac.target_critic.parameters()), "target critic got a gradient"
    assert not any(p.requires_grad for p in sac.target_critic.parameters())


@pytest.mark.parametrize("cfg_name", list(CONFIGS))
def test_gradient_isolation_of_each_loss(cfg_name: str) -> None:
    batch = random_batch()
    sac = SAC(SPEC, CONFIGS[cfg_name], seed=1)
    assert isinstance(sac, Algorithm)

    sac.critic_loss(batch)[0].backward()
    _assert_grads(sac, actor=False, critic=True, alpha=False)

    sac = SAC(SPEC, CONFIGS[cfg_name], seed=1)
    sac.actor_loss(batch)[0].backward()
    _assert_grads(sac, actor=True, critic=False, alpha=False)

    for source in ("batch", "log_prob"):
        sac = SAC(SPEC, CONFIGS[cfg_name], seed=1)
        if source == "batch":
            arg: TransitionBatch | torch.Tensor = batch
        else:  # a log_prob that still carries the actor's graph must not leak gradient into the actor
            _, arg = sac.actor.sample(obs_vector(batch.obs, sac.obs_keys))
        sac.temperature_loss(arg)[0].backward()
        _assert_grads(sac, actor=False, critic=False, alpha=True)


def test_critic_loss_is_mse_to_reward_when_discount_is_zero() -> None:
    sac = SAC(SPEC, CONFIGS["redq"], seed=2)
    batch = random_batch(discount=0.0)
    loss, metrics = sac.critic_loss(batch)
    with torch.no_grad():
        q = sac.critic(batch.obs["state"], batch.action)  # [E, B]
        expected = ((q - batch.reward[None]) ** 2).mean()
    assert q.shape == (10, 64)
    torch.testing.assert_close(loss.detach(), expected)
    torch.testing.assert_close(metrics["target_q_mean"], batch.reward.mean())


@pytest.mark.parametrize("cfg_name", list(CONFIGS))
def test_td_target_by_hand(cfg_name: str) -> None:
    """Replays the learner's random draws (action noise, then the member subset) and rebuilds the target."""
    cfg = CONFIGS[cfg_name]
    sac = SAC(SPEC, cfg, seed=3)
    with torch.no_grad():
        sac.log_alpha.fill_(math.log(0.3))
        for p in sac.target_critic.parameters():  # make target and online critics differ
            p.add_(0.05 * torch.randn_like(p))
    batch = random_batch(seed=4)
    g = torch.Generator().manual_seed(0)
    g.set_state(sac.generator.get_state())
    with torch.no_grad():
        next_obs = batch.next_obs["state"]
        next_action, next_log_prob = sac.actor.sample(next_obs, generator=g)
        next_q_all = sac.target_critic(next_obs, next_action)
        if cfg.critic_subsample is not None:
            members = torch.randperm(cfg.num_critics, generator=g)[: cfg.critic_subsample]
            next_q_all = next_q_all[members]
        next_q = next_q_all.min(dim=0).values
        if cfg.backup_entropy:
            next_q = next_q - 0.3 * next_log_prob
        y = batch.reward + cfg.gamma * batch.discount * next_q
        expected = ((sac.critic(batch.obs["state"], batch.action) - y) ** 2).mean()
    loss, metrics = sac.critic_loss(batch)
    torch.testing.assert_close(loss.detach(), expected)
    torch.testing.assert_close(metrics["target_q_mean"], y.mean())


@pytest.mark.parametrize("layer_norm", [False, True])
def test_critic_ensemble_matches_per_member_forward(layer_norm: bool) -> None:
    torch.manual_seed(0)
    critic = CriticEnsemble(3, 2, (16, 8), num_critics=4, layer_norm=layer_norm)
    with torch.no_grad():  # non-trivial LayerNorm affine parameters, different per member
        for p in [*critic.ln_scales, *critic.ln_shifts]:
            p.copy_(torch.randn_like(p))
    obs, action = torch.randn(5, 3), torch.randn(5, 2)
    q = critic(obs, action)
    assert q.shape == (4, 5)
    for e in range(4):
        h = torch.cat([obs, action], dim=-1)
        for i in range(3):
            h = h @ critic.weights[i][e] + critic.biases[i][e, 0]
            if i < 2:
                if layer_norm:
                    h = F.layer_norm(h, (h.shape[-1],), critic.ln_scales[i][e, 0], critic.ln_shifts[i][e, 0])
                h = torch.relu(h)
        torch.testing.assert_close(q[e], h[:, 0])
    members = torch.tensor([3, 1])
    torch.testing.assert_close(critic(obs, action, members=members), q[members])
    # Members are initialised independently, within nn.Linear's fan-in bound.
    w0 = critic.weights[0]
    assert not torch.equal(w0[0], w0[1])
    assert w0.abs().max() <= 1 / math.sqrt(5)


def test_tanh_gaussian_log_prob_matches_torch_distributions() -> None:
    torch.manual_seed(0)
    actor = TanhGaussianActor(3, 2, SMALL)
    obs = torch.randn(7, 3)
    g = torch.Generator().manual_seed(5)
    action, log_prob = actor.sample(obs, generator=g)
    mean, log_std = actor(obs)
    dist = torch.distributions.TransformedDistribution(
        torch.distributions.Normal(mean, log_std.exp()), [torch.distributions.TanhTransform()]
    )
    torch.testing.assert_close(log_prob, dist.log_prob(action).sum(-1), atol=1e-4, rtol=1e-4)
    assert action.abs().max() < 1
    det_action, _ = actor.sample(obs, deterministic=True)
    torch.testing.assert_close(det_action, torch.tanh(mean))


def test_polyak_update() -> None:
    sac = SAC(SPEC, SACConfig(hidden_dims=SMALL, num_critics=4, tau=0.1), seed=0)
    old_target = [p.detach().clone() for p in sac.target_critic.parameters()]
    old_online = [p.detach().clone() for p in sac.critic.parameters()]
    sac.update(random_batch())
    for old_t, old_o, new_t, new_o in zip(old_target, old_online, sac.target_critic.parameters(),
                                          sac.critic.parameters(), strict=True):
        assert not torch.equal(new_o, old_o)  # the critic did step
        torch.testing.assert_close(new_t, 0.9 * old_t + 0.1 * new_o.detach())


def test_update_returns_detached_scalar_metrics() -> None:
    metrics = SAC(SPEC, CONFIGS["default"]).update(random_batch())
    for key in ("critic_loss", "actor_loss", "alpha", "entropy", "q_mean", "target_q_mean", "temperature_loss"):
        assert metrics[key].dim() == 0 and not metrics[key].requires_grad, key
        assert torch.isfinite(metrics[key]), key


def test_save_load_continues_bit_identically() -> None:
    cfg = CONFIGS["redq"]
    first = SAC(SPEC, cfg, seed=0)
    for i in range(3):
        first.update(random_batch(seed=10 + i))
    second = SAC(SPEC, cfg, seed=123)
    state = first.state_dict()
    snapshot = {k: v.clone() for k, v in state["critic"].items()}
    moments = [s["exp_avg"].clone() for s in state["critic_optim"]["state"].values()]
    second.load_state_dict(state)
    for i in range(3):  # several steps: shared Adam moments or an unrestored RNG would show up here
        batch = random_batch(seed=20 + i)
        m1, m2 = first.update(batch), second.update(batch)
        assert m1.keys() == m2.keys()
        for key in m1:
            assert torch.equal(m1[key], m2[key]), key
    # The saved state is a snapshot: the updates above did not change it.
    for key, value in snapshot.items():
        assert torch.equal(state["critic"][key], value), key
    for saved, value in zip(state["critic_optim"]["state"].values(), moments, strict=True):
        assert torch.equal(saved["exp_avg"], value)
    s1, s2 = first.state_dict(), second.state_dict()
    for part in ("actor", "critic", "target_critic"):
        for key in s1[part]:
            assert torch.equal(s1[part][key], s2[part][key]), f"{part}.{key}"
    assert torch.equal(first.log_alpha, second.log_alpha)


def test_policy_round_trip_and_strict_weights() -> None:
    sac = SAC(SPEC, CONFIGS["default"], seed=0)
    sac.update(random_batch())
    obs = {"state": np.array([0.3, -0.2, 0.9], np.float32)}
    policy = sac.make_policy()
    assert isinstance(policy, Policy)
    action = policy.act(obs, deterministic=True)
    assert action.shape == (2,) and action.dtype == np.float32
    with torch.no_grad():
        expected = torch.tanh(sac.actor(torch.as_tensor(obs["state"])[None])[0])[0].numpy()
    np.testing.assert_allclose(action, expected, rtol=1e-6, atol=1e-6)

    other = GaussianPolicy(SPEC, SMALL)
    assert not np.allclose(other.act(obs, deterministic=True), action)
    other.load_weights(sac.policy_weights())
    np.testing.assert_array_equal(other.act(obs, deterministic=True), action)
    stochastic = other.act(obs)
    assert stochastic.shape == (2,) and np.all(np.abs(stochastic) < 1)

    weights = sac.policy_weights()
    key = next(iter(weights))
    bad = dict(weights, **{key: np.zeros((1, 1), np.float32)})
    with pytest.raises(ValueError, match=key):
        other.load_weights(bad)
    with pytest.raises(ValueError, match=key):
        other.load_weights({k: v for k, v in weights.items() if k != key})
    with pytest.raises(ValueError, match="bogus"):
        other.load_weights(dict(weights, bogus=np.zeros(1, np.float32)))
    np.testing.assert_array_equal(other.act(obs, deterministic=True), action)  # failed loads changed nothing


def test_obs_keys_are_sorted_floating_entries_and_images_go_to_the_encoder() -> None:
    spec = TransitionSpec(
        obs={"z_vel": ArraySpec((2,), F32), "image": ArraySpec((8, 8, 3), np.dtype(np.uint8)),
             "a_pos": ArraySpec((1, 2), np.dtype(np.float64))},
        action=ArraySpec((2,), F32),
    )
    sac = SAC(spec, CONFIGS["default"], encoder=EncoderConfig(channels=(4,), groups=2, out_dim=5))
    policy = sac.make_policy()
    assert policy.obs_keys == sac.obs_keys == ["a_pos", "z_vel"]
    assert sac.actor_encoder is not None and sac.actor_encoder.keys == ("image",)
    assert sac.actor.trunk.net[0].in_features == 2 + 2 + 5  # state keys, then the image features
    obs = {"z_vel": np.ones(2, np.float32), "image": np.zeros((8, 8, 3), np.uint8), "a_pos": np.ones((1, 2))}
    assert policy.act(obs).shape == (2,)
    # The policy reads the image: a different frame gives a different deterministic action.
    bright = dict(obs, image=np.full((8, 8, 3), 255, np.uint8))
    assert not np.allclose(policy.act(obs, deterministic=True), policy.act(bright, deterministic=True))


def test_learners_import_neither_ray_nor_reverb() -> None:
    root = pathlib.Path(__file__).resolve().parents[1] / "fleetrl" / "learners"
    for path in root.glob("*.py"):
        text = path.read_text()
        assert "import ray" not in text and "import reverb" not in text, path


def _bandit_batch(g: torch.Generator, batch_size: int) -> TransitionBatch:
    obs = torch.rand(batch_size, 3, generator=g) * 2 - 1
    action = torch.rand(batch_size, 2, generator=g) * 2 - 1
    reward = -(action - 0.5 * obs[:, :2]).square().sum(-1)
    zeros = torch.zeros(batch_size)
    return TransitionBatch(obs={"state": obs}, action=action, reward=reward, discount=zeros,
                           terminated=torch.ones(batch_size, dtype=torch.bool), truncated=zeros.bool(),
                           next_obs={"state": obs}, mc_return=reward, is_intervention=zeros.bool(),
                           policy_version=zeros.long(), actor_id=zeros.int(), episode_id=zeros.long())


def test_learns_a_contextual_bandit() -> None:
    """One-step task, reward -||a - 0.5*obs[:2]||^2: the deterministic policy must learn to hit the target."""
    cfg = SACConfig(hidden_dims=SMALL, actor_lr=1e-3, critic_lr=1e-3, alpha_lr=1e-3, init_temperature=0.1)
    sac = SAC(SPEC, cfg, seed=0)
    g = torch.Generator().manual_seed(1)
    eval_obs = np.random.default_rng(0).uniform(-1, 1, size=(200, 3)).astype(np.float32)

    def policy_error() -> float:
        policy = sac.make_policy()
        actions = np.stack([policy.act({"state": o}, deterministic=True) for o in eval_obs])
        return float(np.mean((actions - 0.5 * eval_obs[:, :2]) ** 2))

    untrained = policy_error()
    for _ in range(400):
        sac.update(_bandit_batch(g, 64))
    trained = policy_error()
    assert untrained > 0.03, untrained  # ~ E[(0.5 x)^2] = 1/12 for an output near 0
    assert trained < 0.01, (untrained, trained)  # seeds 0-5 reach 0.001-0.003


def test_generator_state_from_another_device_type_is_accepted():
    """A CPU run resumed on a CUDA learner (or back): generator states differ in size; loading must not fail."""
    spec = TransitionSpec(obs={"state": ArraySpec((3,), np.dtype(np.float32))},
                          action=ArraySpec((2,), np.dtype(np.float32)))
    sac = SAC(spec, SACConfig(hidden_dims=(16,)), seed=0)
    state = sac.state_dict()
    state["generator"] = torch.arange(16, dtype=torch.uint8)  # the size of a CUDA Philox generator state
    other = SAC(spec, SACConfig(hidden_dims=(16,)), seed=1)
    other.load_state_dict(state)
    for name, tensor in sac.actor.state_dict().items():
        torch.testing.assert_close(other.actor.state_dict()[name], tensor)
    fresh = SAC(spec, SACConfig(hidden_dims=(16,)), seed=1)
    assert not torch.equal(other.generator.get_state(), fresh.generator.get_state())  # reseeded from the state


@pytest.mark.parametrize("layer_norm", [False, True])
def test_critic_ensemble_batched_and_per_member_paths_agree(layer_norm: bool) -> None:
    """CPU runs the per-member path, GPUs the batched one: same values, same gradients, subsets included."""
    torch.manual_seed(0)
    ens = CriticEnsemble(5, 2, (16, 16), 4, layer_norm)
    obs, act = torch.randn(7, 5), torch.randn(7, 2)
    members = torch.tensor([3, 1])
    results = {}
    for batched in (True, False):
        ens.batched = batched
        ens.zero_grad()
        q, q_sub = ens(obs, act), ens(obs, act, members=members)
        (q.square().sum() + q_sub.sum()).backward()
        results[batched] = (q.detach(), q_sub.detach(), [p.grad.clone() for p in ens.parameters()])
    torch.testing.assert_close(results[True][0], results[False][0])
    torch.testing.assert_close(results[True][1], results[False][1])
    for g_batched, g_loop in zip(results[True][2], results[False][2], strict=True):
        torch.testing.assert_close(g_batched, g_loop)
