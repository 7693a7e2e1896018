"""OGPO and the flow policy (issue 8): chain likelihoods, advantages, PPO ratio, chunked TD, flow BC, gradients."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from fleetrl.config import FlowConfig, OGPOConfig, load_config
from fleetrl.learners.flow import (
    FlowVelocity,
    _step_means,
    chain_log_prob,
    chain_sigmas,
    euler_sample,
    flow_matching_loss,
    sample_chain,
    sample_chain_with_log_prob,
)
from fleetrl.learners.flow_policy import FlowChunkPolicy
from fleetrl.learners.ogpo import (
    OGPO,
    chain_advantage,
    chi2_penalty,
    chunk_td_target,
    conservative_advantage,
    group_advantage,
    ppo_chain_loss,
)
from fleetrl.types import ArraySpec, TransitionBatch, TransitionSpec

F32 = np.dtype(np.float32)
SPEC = TransitionSpec(obs={"state": ArraySpec((3,), F32)}, action=ArraySpec((2,), F32))
SMALL_FLOW = FlowConfig(horizon=2, denoise_steps=4, hidden_dims=(32, 32), time_features=8)
SMALL_OGPO = OGPOConfig(num_critics=3, critic_hidden_dims=(32, 32), ppo_states=4, chains_per_state=5)


def chunk_batch(b: int = 6, horizon: int = 2, seed: int = 0) -> TransitionBatch:
    g = torch.Generator().manual_seed(seed)
    return TransitionBatch(
        obs={"state": torch.randn((b, 3), generator=g)}, action=torch.rand((b, horizon, 2), generator=g) * 2 - 1,
        reward=torch.rand((b, horizon), generator=g), discount=torch.ones(b, horizon),
        terminated=torch.zeros(b, dtype=torch.bool), truncated=torch.zeros(b, dtype=torch.bool),
        next_obs={"state": torch.randn((b, 3), generator=g)}, mc_return=torch.zeros(b),
        is_intervention=torch.zeros(b, dtype=torch.bool), policy_version=torch.zeros(b, dtype=torch.int64),
        actor_id=torch.zeros(b, dtype=torch.int32), episode_id=torch.zeros(b, dtype=torch.int64))


# ------------------------------------------------------------------------------------------ chain likelihood


def test_chain_log_prob_equals_a_brute_force_gaussian_computation():
    torch.manual_seed(0)
    vel = FlowVelocity(obs_dim=3, chunk_dim=4, hidden_dims=(16,), time_features=4).double()
    obs = torch.randn(3, 3, dtype=torch.float64)
    steps, scale = 5, 0.3
    chains = sample_chain(vel, obs, steps, scale)
    fast = chain_log_prob(vel, obs, chains, scale).detach().numpy()

    # One chain, one step, one explicit multivariate normal density at a time (full covariance, determinant).
    for n in range(3):
        total = 0.0
        for k in range(steps):
            t = k / steps
            x = chains[n, k].numpy()
            with torch.no_grad():
                v = vel(obs[n:n + 1], chains[n:n + 1, k], torch.tensor([t], dtype=torch.float64))[0].numpy()
            sigma = scale * math.sqrt(1 - t)
            mean = x + (v + sigma ** 2 / 2 * (t * v - x) / (1 - t)) / steps
            cov = sigma ** 2 * np.eye(4)
            diff = chains[n, k + 1].numpy() - mean
            total += -0.5 * diff @ np.linalg.inv(cov) @ diff - 0.5 * math.log(np.linalg.det(2 * math.pi * cov))
        assert fast[n] == pytest.approx(total / (steps * 4), rel=1e-9, abs=1e-9)
    # The sampler's own log-prob (from its normal draws, no second pass) is the same number.
    torch.manual_seed(1)
    chains, sampled = sample_chain_with_log_prob(vel, obs, steps, scale)
    np.testing.assert_allclose(sampled.numpy(), chain_log_prob(vel, obs, chains, scale).detach().numpy(),
                               rtol=1e-12, atol=1e-12)


def test_chain_noise_tapers_and_sampled_chains_follow_the_flow():
    sig = chain_sigmas(4, 0.05)
    assert sig[0] == pytest.approx(0.05) and all(a > b for a, b in zip(sig, sig[1:], strict=False))
    torch.manual_seed(1)
    vel = FlowVelocity(3, 4, (16,), 4)
    obs = torch.randn(64, 3)
    chains = sample_chain(vel, obs, 8, 1e-6)  # almost no noise: the chain is the Euler ODE from its own x_0
    assert torch.allclose(chains[:, -1], euler_sample(vel, obs, 8, chains[:, 0]), atol=1e-4)


def test_the_gradient_of_the_chain_log_prob_reaches_the_velocity_field_not_the_chain():
    vel = FlowVelocity(3, 4, (16,), 4)
    obs = torch.randn(5, 3)
    chains = sample_chain(vel, obs, 3, 0.1).requires_grad_(True)
    chain_log_prob(vel, obs, chains, 0.1).sum().backward()
    assert chains.grad is None
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in vel.parameters())


# ------------------------------------------------------------------------------------------ PPO pieces


def test_the_ratio_is_one_when_the_policy_equals_the_old_policy():
    algo = OGPO(SPEC, SMALL_OGPO, SMALL_FLOW, seed=0)
    assert all(torch.equal(a, b) for a, b in zip(algo.actor.parameters(), algo.old_actor.parameters(), strict=True))
    _, metrics = algo.policy_loss(chunk_batch())
    # The old log-prob comes from the sampler step by step, the new one from one batched pass: equal up to float32
    # rounding, a thousand times inside the clip (0.01).
    assert metrics["ratio_mean"].item() == pytest.approx(1.0, abs=1e-5)
    assert metrics["clip_fraction"].item() == 0.0
    # After an update the old policy is only an EMA of the new one: the next ratio differs from 1.
    algo.update(chunk_batch())
    _, metrics = algo.policy_loss(chunk_batch(seed=1))
    assert metrics["ratio_mean"].item() != 1.0


def test_the_group_mean_advantage_sums_to_zero_per_state():
    q = torch.randn(10, 7, 32)
    adv = group_advantage(q)
    assert adv.shape == (7, 32)
    assert torch.allclose(adv.sum(-1), torch.zeros(7), atol=1e-5)
    assert torch.allclose(adv, q.mean(0) - q.mean(0).mean(-1, keepdim=True))  # no std normalisation


def test_the_noise_group_advantage_sums_to_zero_over_the_chains_sharing_a_noise():
    q = torch.randn(10, 7, 32)
    assert torch.equal(chain_advantage(q), group_advantage(q))  # chains_per_noise 1: OGPO's per-state baseline
    adv = chain_advantage(q, chains_per_noise=4)
    assert adv.shape == (7, 32)
    assert torch.allclose(adv.reshape(7, 8, 4).sum(-1), torch.zeros(7, 8), atol=1e-5)
    assert not torch.allclose(adv, group_advantage(q), atol=1e-3)
    cons = chain_advantage(q, chains_per_noise=4, conservative=True)
    assert torch.equal(cons.reshape(7, 8, 4), conservative_advantage(q.reshape(10, 7, 8, 4).flatten(1, 2))
                       .reshape(7, 8, 4))
    with pytest.raises(ValueError, match="chains_per_noise"):
        OGPOConfig(chains_per_state=32, chains_per_noise=5)


def test_the_per_noise_baseline_keeps_the_policy_gradient_and_cuts_its_variance():
    """The chain likelihood is conditioned on x_0, so a baseline over chains sharing x_0 leaves the score-function
    gradient's expectation at (1 - 1/c) times the pathwise gradient of E[Q], as the per-state baseline does at
    (1 - 1/G); it removes Q's spread over x_0, which the chain's score cannot explain."""
    torch.manual_seed(0)
    steps, scale, d = 4, 0.2, 2
    vel = FlowVelocity(obs_dim=1, chunk_dim=d, hidden_dims=(16,), time_features=4).double()
    params = list(vel.parameters())
    w = torch.tensor([1.0, -0.5], dtype=torch.float64)

    def q_of(x):
        return x @ w + 0.5 * x.square().sum(-1)

    # Pathwise gradient of E[Q(x_K)] with the chain's normal draws held fixed: the reference.
    n = 40_000
    x = torch.randn(n, d, dtype=torch.float64)
    obs = torch.zeros(n, 1, dtype=torch.float64)
    for k, sigma in enumerate(chain_sigmas(steps, scale)):
        t = torch.full((n,), k / steps, dtype=torch.float64)
        x = _step_means(vel, obs, x, t, torch.full_like(t, sigma), 1 / steps) + sigma * torch.randn(n, d).double()
    pathwise = torch.cat([g.flatten() for g in torch.autograd.grad(q_of(x).mean(), params)])

    def estimate(chains_per_noise: int, groups: int = 16, group: int = 8) -> torch.Tensor:
        obs = torch.zeros(groups * group, 1, dtype=torch.float64)
        x0 = torch.randn(groups * group // chains_per_noise, d, dtype=torch.float64)
        chains, _ = sample_chain_with_log_prob(vel, obs, steps, scale, noise=x0.repeat_interleave(chains_per_noise, 0))
        assert torch.equal(chains[:, 0], x0.repeat_interleave(chains_per_noise, 0))
        q = q_of(chains[:, -1]).reshape(1, groups, group)
        adv = chain_advantage(q, chains_per_noise)
        # Score-function estimate, undoing chain_log_prob's 1/(K·D) and the baseline's (1 - 1/c) shrinkage.
        size = chains_per_noise if chains_per_noise > 1 else group
        objective = (adv.flatten() * chain_log_prob(vel, obs, chains, scale)).mean() * steps * d / (1 - 1 / size)
        return torch.cat([g.flatten() for g in torch.autograd.grad(objective, params)])

    per_noise = torch.stack([estimate(8) for _ in range(300)])
    per_state = torch.stack([estimate(1) for _ in range(300)])
    # Unbiased: the per-noise estimator's mean is the pathwise gradient, within 4 standard errors per parameter
    # (and far closer than the gradient's own size).
    err = (per_noise.mean(0) - pathwise).abs()
    assert (err < 4 * per_noise.std(0) / math.sqrt(300) + 1e-6).float().mean() > 0.97
    assert err.norm() < 0.1 * pathwise.norm()
    # Lower variance, though from 8x fewer distinct x_0: here about 4x lower in total.
    assert per_noise.var(0).sum() < 0.4 * per_state.var(0).sum()


def test_the_conservative_advantage_keeps_only_what_every_head_agrees_on():
    # One state, three chains, two heads. Per-head advantages (q minus the head's chain mean):
    #   head 0: [+2, -1, -1], head 1: [+1, +1, -2]  ->  chain 0 all positive (min 1), chain 1 disagree (0),
    #   chain 2 all negative (max -1).
    q = torch.tensor([[[3.0, 0.0, 0.0]], [[2.0, 2.0, -1.0]]])
    adv = conservative_advantage(q)
    assert adv.tolist() == [[1.0, 0.0, -1.0]]


def test_the_clipped_surrogate_has_no_gradient_outside_the_clip_in_the_advantage_direction():
    adv = torch.tensor([1.0, -1.0, 1.0, -1.0])
    old = torch.zeros(4)
    logp = torch.tensor([0.5, -0.5, -0.5, 0.5], requires_grad=True)  # ratios e^.5 (A>0), e^-.5 (A<0), ...
    loss, metrics = ppo_chain_loss(logp, old, adv, clip=0.01)
    loss.backward()
    # Ratio above 1 + eps with A > 0, and below 1 - eps with A < 0: clipped, no gradient. The other two are not.
    assert logp.grad[0] == 0 and logp.grad[1] == 0
    assert logp.grad[2] != 0 and logp.grad[3] != 0
    assert metrics["clip_fraction"].item() == 1.0


# ------------------------------------------------------------------------------------------ critic


def test_chunked_td_targets_on_a_hand_made_batch():
    g = 0.9
    rewards = torch.tensor([[1.0, 2.0, 3.0], [1.0, 1.0, 0.0], [0.0, 5.0, 0.0], [1.0, 0.0, 0.0]])
    valid = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 1, 0], [1, 0, 0]], dtype=torch.float32)
    terminated = torch.tensor([False, True, False, False])
    next_v = torch.tensor([10.0, 10.0, 10.0, -4.0])
    y = chunk_td_target(rewards, valid, terminated, next_v, g)
    expected = [1 + g * 2 + g * g * 3 + g ** 3 * 10,   # a whole chunk: gamma^H bootstrap
                1 + g * 1,                             # terminated after 2 steps: no bootstrap
                0 + g * 5 + g ** 2 * 10,               # time limit after 2 steps: gamma^2 bootstrap
                1 + g * -4]                            # one step left in the episode
    assert y.tolist() == pytest.approx(expected)


def test_each_loss_reaches_only_its_own_parameters():
    algo = OGPO(SPEC, SMALL_OGPO, SMALL_FLOW, seed=0)
    batch = chunk_batch()
    loss, _ = algo.critic_loss(batch)
    loss.backward()
    assert all(p.grad is not None for p in algo.critic.parameters())
    assert all(p.grad is None for p in algo.actor.parameters())
    assert all(p.grad is None for p in algo.target_critic.parameters())
    assert all(p.grad is None for p in algo.old_actor.parameters())
    algo.critic.zero_grad(set_to_none=True)
    loss, _ = algo.policy_loss(batch, bc_batch=chunk_batch(seed=3))
    loss.backward()
    assert all(p.grad is None for p in algo.critic.parameters())  # no grad_a Q, no critic step from PPO
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in algo.actor.parameters())
    assert all(p.grad is None for p in algo.old_actor.parameters())


def test_ppo_coef_zero_leaves_the_policy_to_success_bc_alone():
    def actor_after_update(**changes) -> list[torch.Tensor]:
        algo = OGPO(SPEC, dataclasses.replace(SMALL_OGPO, **changes), SMALL_FLOW, seed=0)
        critic_before = [p.clone() for p in algo.critic.parameters()]
        algo.update(chunk_batch(), bc_batch=chunk_batch(seed=3))
        assert not all(torch.equal(a, b) for a, b in zip(critic_before, algo.critic.parameters(), strict=True))
        return [p.detach().clone() for p in algo.actor.parameters()]

    start = [p.detach().clone() for p in OGPO(SPEC, SMALL_OGPO, SMALL_FLOW, seed=0).actor.parameters()]
    # Neither PPO nor BC: the critic learns, the policy stays exactly where it was.
    assert all(torch.equal(a, b) for a, b in zip(start, actor_after_update(ppo_coef=0.0, success_bc=False),
                                                  strict=True))
    # PPO alone and success BC alone each move it; together they move it differently from BC alone.
    ppo_only = actor_after_update(success_bc=False)
    bc_only = actor_after_update(ppo_coef=0.0)
    both = actor_after_update()
    assert not all(torch.equal(a, b) for a, b in zip(start, ppo_only, strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(start, bc_only, strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(bc_only, both, strict=True))


def test_the_q_target_is_the_ensemble_mean_and_averages_several_next_chunks():
    cfg = OGPOConfig(num_critics=4, critic_hidden_dims=(16,), q_target_samples=8, ppo_states=2, chains_per_state=2)
    algo = OGPO(SPEC, cfg, SMALL_FLOW, seed=0)
    batch = chunk_batch()
    batch.terminated = torch.ones(6, dtype=torch.bool)  # no bootstrap: the target is the discounted chunk reward
    _, metrics = algo.critic_loss(batch)
    r = batch.reward
    assert metrics["target_q_mean"].item() == pytest.approx((r[:, 0] + 0.99 * r[:, 1]).mean().item(), rel=1e-6)


# ------------------------------------------------------------------------------------------ flow BC and learning


def test_flow_bc_lowers_the_flow_matching_loss_and_reproduces_the_data():
    torch.manual_seed(0)
    vel = FlowVelocity(obs_dim=2, chunk_dim=2, hidden_dims=(64, 64), time_features=8)
    opt = torch.optim.Adam(vel.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)

    def data(n: int) -> tuple[torch.Tensor, torch.Tensor]:  # the expert's chunk is a fixed function of the state
        s = torch.rand((n, 2), generator=g) * 2 - 1
        return s, torch.stack([0.8 * s[:, 0], -0.5 * s[:, 1]], dim=-1)

    s_eval, a_eval = data(256)
    before = flow_matching_loss(vel, s_eval, a_eval, torch.Generator().manual_seed(9))[0].item()
    for _ in range(600):
        s, a = data(128)
        loss, _ = flow_matching_loss(vel, s, a, g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = flow_matching_loss(vel, s_eval, a_eval, torch.Generator().manual_seed(9))[0].item()
    assert after < 0.5 * before
    sampled = euler_sample(vel, s_eval, 10, torch.randn(256, 2, generator=g))
    assert (sampled - a_eval).abs().mean().item() < 0.1


def test_ogpo_moves_a_flow_policy_towards_higher_value_chunks():
    """A one-step bandit: reward -|chunk - target|^2; after OGPO updates the policy's chunks are closer to it."""
    flow = FlowConfig(horizon=1, denoise_steps=4, hidden_dims=(64, 64), time_features=8)
    cfg = OGPOConfig(num_critics=4, critic_hidden_dims=(64, 64), ppo_states=32, chains_per_state=16, clip=0.2,
                     policy_lr=1e-3, critic_lr=3e-3, noise_scale=0.3, old_policy_ema=0.5, success_bc=False,
                     conservative_advantage=False)
    algo = OGPO(SPEC, cfg, flow, seed=0)
    target = torch.tensor([0.6, -0.6])
    g = torch.Generator().manual_seed(0)

    def distance() -> float:
        obs = {"state": torch.zeros(256, 3)}
        chunks = algo.actor.sample_chunks(obs, torch.randn(256, 2, generator=g))
        return (chunks[:, 0] - target).norm(dim=-1).mean().item()

    start = distance()
    for _ in range(300):
        b = 64
        action = torch.rand((b, 1, 2), generator=g) * 2 - 1
        batch = chunk_batch(b, horizon=1)
        batch.obs, batch.next_obs = {"state": torch.zeros(b, 3)}, {"state": torch.zeros(b, 3)}
        batch.action = action
        batch.reward = -(action[:, 0] - target).square().sum(-1, keepdim=True)
        batch.discount, batch.terminated = torch.ones(b, 1), torch.ones(b, dtype=torch.bool)
        algo.update(batch)
    assert distance() < 0.6 * start


# ------------------------------------------------------------------------------------------ shipped policy, state


def test_the_shipped_chunk_policy_executes_the_learner_chunk_in_order_and_resamples():
    algo = OGPO(SPEC, SMALL_OGPO, SMALL_FLOW, seed=0)
    policy = FlowChunkPolicy(SPEC, SMALL_FLOW, seed=0)
    policy.load_weights(algo.policy_weights())
    obs = {"state": np.array([0.1, -0.2, 0.3], np.float32)}
    a0, a1 = policy.act(obs, deterministic=True), policy.act(obs, deterministic=True)
    expected = algo.actor.sample_chunks({"state": torch.as_tensor(obs["state"])[None]}, torch.zeros(1, 4))[0]
    assert np.allclose(np.stack([a0, a1]), expected.numpy(), atol=1e-6)
    assert a0.shape == (2,) and np.all(np.abs(a0) <= 1)
    policy.reset()
    assert np.allclose(policy.act(obs, deterministic=True), a0, atol=1e-6)  # a new chunk from the first action


def test_ppo_starts_after_its_warm_up_updates_and_a_restored_learner_remembers_them():
    cfg = dataclasses.replace(SMALL_OGPO, ppo_start_updates=2, success_bc=False)
    algo = OGPO(SPEC, cfg, SMALL_FLOW, seed=0)
    params = lambda: [p.detach().clone() for p in algo.actor.parameters()]  # noqa: E731
    start = params()
    ons = [algo.update(chunk_batch(seed=i))["ppo_on"].item() for i in range(2)]
    assert ons == [0.0, 0.0] and all(torch.equal(a, b) for a, b in zip(start, params(), strict=True))
    restored = OGPO(SPEC, cfg, SMALL_FLOW, seed=1)
    restored.load_state_dict(algo.state_dict())
    assert restored.updates == 2 and restored.update(chunk_batch(seed=2))["ppo_on"].item() == 1.0
    assert algo.update(chunk_batch(seed=2))["ppo_on"].item() == 1.0
    assert not all(torch.equal(a, b) for a, b in zip(start, params(), strict=True))


def test_state_dict_round_trip_continues_bit_identically():
    cfg = OGPOConfig(num_critics=3, critic_hidden_dims=(32,), ppo_states=4, chains_per_state=4, chi2=True)
    a, b = OGPO(SPEC, cfg, SMALL_FLOW, seed=0), OGPO(SPEC, cfg, SMALL_FLOW, seed=5)
    a.update(chunk_batch())
    b.load_state_dict(a.state_dict())
    ma, mb = a.update(chunk_batch(seed=2)), b.update(chunk_batch(seed=2))
    assert {k: v.item() for k, v in ma.items()} == {k: v.item() for k, v in mb.items()}
    assert all(torch.equal(x, y) for x, y in zip(a.actor.parameters(), b.actor.parameters(), strict=True))
    with pytest.raises(ValueError, match="ref_actor"):
        OGPO(SPEC, dataclasses.replace(cfg, chi2=False), SMALL_FLOW).load_state_dict(a.state_dict())


def test_flow_and_ogpo_configs_validate_with_the_key_named(tmp_path):
    with pytest.raises(Exception, match="time_features"):
        FlowConfig(time_features=7)
    with pytest.raises(Exception, match="clip"):
        OGPOConfig(clip=0.0)
    assert load_config(None).learner is not None


def test_flow_bc_state_initialises_ogpo_policy_and_leaves_its_critic_fresh():
    from fleetrl.learners.flow_bc import FlowBC

    bc = FlowBC(SPEC, SMALL_FLOW, seed=3)
    for _ in range(3):
        bc.update(chunk_batch())
    algo = OGPO(SPEC, dataclasses.replace(SMALL_OGPO, chi2=True), SMALL_FLOW, seed=0)
    critic_before = [p.clone() for p in algo.critic.parameters()]
    algo.load_state_dict(bc.state_dict())
    for actor in (algo.actor, algo.old_actor, algo.ref_actor):
        assert all(torch.equal(a, b) for a, b in zip(actor.parameters(), bc.actor.parameters(), strict=True))
    assert all(torch.equal(a, b) for a, b in zip(algo.critic.parameters(), critic_before, strict=True))
    assert algo.policy_weights().keys() == bc.policy_weights().keys()
    with pytest.raises(ValueError, match="flow-bc"):
        bc.load_state_dict(algo.state_dict())


def test_flow_bc_leaves_padding_past_the_episode_end_out_of_the_loss():
    torch.manual_seed(0)
    vel = FlowVelocity(3, 4, (16,), 4)
    obs, chunk = torch.randn(8, 3), torch.rand(8, 2, 2)
    mask = torch.tensor([[1.0, 1.0]] * 4 + [[1.0, 0.0]] * 4)  # the last 4 chunks run past their episode's end
    masked, _ = flow_matching_loss(vel, obs, chunk, torch.Generator().manual_seed(1), mask)
    # The same draws by hand: the error on the padded step's two action dims is left out of the mean.
    g = torch.Generator().manual_seed(1)
    x1 = chunk.reshape(8, 4)
    x0, t = torch.randn(x1.shape, generator=g), torch.rand(8, generator=g)
    err = (vel(obs, t[:, None] * x1 + (1 - t[:, None]) * x0, t) - (x1 - x0)).square()
    keep = torch.ones(8, 4)
    keep[4:, 2:] = 0
    assert masked.item() == pytest.approx(((err * keep).sum() / keep.sum()).item(), rel=1e-6)
    assert masked.item() != pytest.approx(err.mean().item(), rel=1e-3)


def test_obs_normalisation_reaches_the_shipped_policy():
    algo = OGPO(SPEC, SMALL_OGPO, SMALL_FLOW, seed=0)
    algo.set_obs_normalization(np.array([1.0, 2.0, 3.0]), np.array([2.0, 2.0, 2.0]))
    weights = algo.policy_weights()
    assert weights["obs_mean"].tolist() == [1.0, 2.0, 3.0] and weights["obs_std"].tolist() == [2.0, 2.0, 2.0]
    assert algo.old_actor.obs_mean.tolist() == [1.0, 2.0, 3.0]
    with pytest.raises(ValueError, match="shape"):
        algo.set_obs_normalization(np.zeros(2), np.ones(2))


def test_copies_of_the_chunk_policy_start_without_a_chunk_and_share_the_noise_stream():
    import copy

    policy = FlowChunkPolicy(SPEC, SMALL_FLOW, seed=0)
    obs = {"state": np.zeros(3, np.float32)}
    policy.act(obs)
    clone = copy.deepcopy(policy)
    assert clone._queue == [] and len(policy._queue) == 1
    assert clone._generator is policy._generator


def test_the_image_variant_trains_its_encoders_and_ships_the_actor_encoder():
    from fleetrl.config import EncoderConfig

    spec = TransitionSpec(obs={"state": ArraySpec((3,), F32), "image": ArraySpec((16, 16, 3), np.dtype(np.uint8))},
                          action=ArraySpec((2,), F32))
    enc = EncoderConfig(channels=(8, 16), groups=4, spatial_blocks=2, out_dim=8, shift_pad=2)
    algo = OGPO(spec, SMALL_OGPO, SMALL_FLOW, seed=0, encoder=enc)
    batch = chunk_batch()
    g = torch.Generator().manual_seed(0)
    batch.obs["image"] = torch.randint(0, 255, (6, 16, 16, 3), generator=g, dtype=torch.uint8)
    batch.next_obs["image"] = torch.randint(0, 255, (6, 16, 16, 3), generator=g, dtype=torch.uint8)
    actor_enc = [p.clone() for p in algo.actor.encoder.parameters()]
    critic_enc = [p.clone() for p in algo.critic_encoder.parameters()]
    algo.update(batch, bc_batch=batch)
    assert any(not torch.equal(a, b) for a, b in zip(algo.actor.encoder.parameters(), actor_enc, strict=True))
    assert any(not torch.equal(a, b) for a, b in zip(algo.critic_encoder.parameters(), critic_enc, strict=True))
    weights = algo.policy_weights()
    assert any(k.startswith("encoder.") for k in weights)
    policy = FlowChunkPolicy(spec, SMALL_FLOW, enc, seed=0)
    policy.load_weights(weights)
    action = policy.act({"state": np.zeros(3, np.float32), "image": np.zeros((16, 16, 3), np.uint8)})
    assert action.shape == (2,) and np.all(np.abs(action) <= 1)


def test_the_chi2_penalty_is_exact_near_the_reference_and_finite_far_from_it():
    """(ω - 1)² exactly for moderate log-ratios; a chain 200 nats more likely than under the reference (exp(200)²
    overflows float32: a probe run's weights all became NaN) keeps a finite penalty whose gradient still pushes its
    likelihood down."""
    ref = torch.zeros(4)
    near = torch.tensor([-1.0, 0.0, 0.5, 2.0], requires_grad=True)
    loss, _ = chi2_penalty(near, ref)
    assert loss.item() == pytest.approx(((near.detach().exp() - 1) ** 2).mean().item(), rel=1e-6)
    far = torch.tensor([0.0, 0.0, 0.0, 200.0], requires_grad=True)
    loss, _ = chi2_penalty(far, ref)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(far.grad).all()
    assert far.grad[3] > 0 and far.grad[:3].abs().max() == 0  # descending lowers the far chain's likelihood only


def test_episode_chunks_lay_out_a_dataset_as_the_replay_chunk_items():
    """3-step episodes, H = 2: a chunk per step, the last one padded (mask 0, zero action and reward), ``next_obs``
    the observation after the chunk, ``terminated`` where the episode ends inside it, success per episode."""
    from fleetrl.datasets import Episode
    from fleetrl.learners.flow_bc import episode_chunks

    def episode(won: bool) -> Episode:
        return Episode(observations={"state": np.arange(12, dtype=np.float32).reshape(4, 3)},
                       actions=np.arange(6, dtype=np.float32).reshape(3, 2) + 1,
                       rewards=np.array([0, 0, 1], np.float32), terminated=np.array([0, 0, 1], bool),
                       truncated=np.zeros(3, bool), success=np.array([0, 0, won], bool))

    batch, success = episode_chunks([episode(True), episode(False)], SPEC, 2)
    assert batch.action.shape == (6, 2, 2) and success.tolist() == [True] * 3 + [False] * 3
    np.testing.assert_array_equal(batch.action[2].numpy(), [[5, 6], [0, 0]])
    np.testing.assert_array_equal(batch.discount[:3].numpy(), [[1, 1], [1, 1], [1, 0]])
    np.testing.assert_array_equal(batch.reward[1].numpy(), [0, 1])
    np.testing.assert_array_equal(batch.next_obs["state"][:3, 0].numpy(), [6, 9, 9])  # t + 2, t + 2, the final
    assert batch.terminated[:3].tolist() == [False, True, True]
