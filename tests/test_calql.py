"""Cal-QL and CQL learners: the whole critic loss by hand, gradient isolation per loss term, learning, save/load."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fleetrl.config import CQLConfig, EncoderConfig, LearnerConfig, RewardConfig
from fleetrl.learners.builder import build_algorithm, returns_fn
from fleetrl.learners.calql import CQL, CalQL
from fleetrl.learners.sac import metrics_to_floats
from fleetrl.types import ArraySpec, TransitionBatch, TransitionSpec

F32 = np.dtype(np.float32)
SPEC = TransitionSpec(obs={"state": ArraySpec((2,), F32)}, action=ArraySpec((2,), F32))
IMAGE_SPEC = TransitionSpec(obs={"state": ArraySpec((2,), F32), "image": ArraySpec((8, 8, 3), np.dtype(np.uint8))},
                            action=ArraySpec((2,), F32))
TINY_ENCODER = EncoderConfig(channels=(4,), groups=2, spatial_blocks=2, out_dim=3, shift_pad=1)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def batch_of(b: int, seed: int = 0, spec: TransitionSpec = SPEC, mc_return: torch.Tensor | None = None
             ) -> TransitionBatch:
    g = torch.Generator().manual_seed(seed)

    def obs() -> dict[str, torch.Tensor]:
        out = {"state": torch.rand(b, 2, generator=g) * 2 - 1}
        if "image" in spec.obs:
            out["image"] = torch.randint(0, 256, (b, 8, 8, 3), generator=g, dtype=torch.uint8)
        return out

    terminated = torch.tensor([i % 3 == 0 for i in range(b)])
    return TransitionBatch(
        obs=obs(), action=torch.rand(b, 2, generator=g) * 2 - 1, reward=torch.randn(b, generator=g),
        discount=(~terminated).float(), terminated=terminated, truncated=torch.zeros(b, dtype=torch.bool),
        next_obs=obs(), mc_return=mc_return if mc_return is not None else torch.randn(b, generator=g) * 2,
        is_intervention=torch.zeros(b, dtype=torch.bool), policy_version=torch.zeros(b, dtype=torch.int64),
        actor_id=torch.zeros(b, dtype=torch.int32), episode_id=torch.arange(b, dtype=torch.int64))


def _q(critic: torch.nn.Module, e: int, s: torch.Tensor, a: torch.Tensor) -> float:
    """One critic member at one (s, a), as a Python float."""
    return float(critic(s.view(1, -1), a.view(1, -1))[e, 0])


@pytest.mark.parametrize("cls, scale, bias", [(CalQL, 1.0, 0.0), (CQL, 1.0, 0.0), (CalQL, 10.0, -5.0)])
def test_whole_critic_loss_equals_a_hand_computation(cls, scale, bias):
    """Replays the update's random draws with a copy of its generator, then builds the loss with Python loops."""
    cfg = CQLConfig(hidden_dims=(8,), num_actions=3, alpha=2.5, temperature=1.0, gamma=0.9)
    algo = cls(SPEC, cfg, seed=3, reward=RewardConfig(scale=scale, bias=bias))
    b, n, e_count, a_dim = 4, 3, 2, 2
    batch = batch_of(b, seed=1)
    g = torch.Generator().manual_seed(0)
    g.set_state(algo.generator.get_state())
    loss, metrics = algo.critic_loss(batch)

    with torch.no_grad():
        # The same draws in the same order as the learner: next actions, uniform, pi(s), pi(s').
        rep_next = batch.next_obs["state"].repeat_interleave(n, 0)
        next_a, _ = algo.actor.sample(rep_next, generator=g)
        uniform = torch.rand((b * n, a_dim), generator=g) * 2 - 1
        pi_a, pi_logp = algo.actor.sample(batch.obs["state"].repeat_interleave(n, 0), generator=g)
        npi_a, npi_logp = algo.actor.sample(rep_next, generator=g)
        expected, gaps = 0.0, []
        targets = []
        for i in range(b):
            best = max(min(_q(algo.target_critic, e, batch.next_obs["state"][i], next_a[i * n + j])
                           for e in range(e_count)) for j in range(n))
            r = float(batch.reward[i]) * scale + bias
            targets.append(r + 0.9 * float(batch.discount[i]) * best)
        for e in range(e_count):
            bellman, gap = 0.0, 0.0
            for i in range(b):
                s, g_i = batch.obs["state"][i], float(batch.mc_return[i])
                q_data = _q(algo.critic, e, s, batch.action[i])
                bellman += (q_data - targets[i]) ** 2 / b
                terms = []
                for j in range(n):
                    k = i * n + j
                    q_pi, q_npi = _q(algo.critic, e, s, pi_a[k]), _q(algo.critic, e, s, npi_a[k])
                    if cls is CalQL:  # the floor: policy-action values only
                        q_pi, q_npi = max(q_pi, g_i), max(q_npi, g_i)
                    terms += [_q(algo.critic, e, s, uniform[k]) - a_dim * math.log(0.5),
                              q_pi - float(pi_logp[k]), q_npi - float(npi_logp[k])]
                gap += (math.log(sum(math.exp(t) for t in terms)) - q_data) / b
            expected += bellman + 2.5 * gap
            gaps.append(gap)
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-5, abs=1e-5)
    assert float(metrics["cql_gap"]) == pytest.approx(sum(gaps) / 2, rel=1e-5, abs=1e-5)
    assert ("calql_bound_rate" in metrics) == (cls is CalQL)


def test_calql_equals_cql_when_the_floor_never_binds_and_differs_when_it_does():
    cfg = CQLConfig(hidden_dims=(8,), num_actions=4)
    low = batch_of(6, mc_return=torch.full((6,), -1e6))
    high = batch_of(6, mc_return=torch.full((6,), 50.0))
    calql, cql = CalQL(SPEC, cfg, seed=0), CQL(SPEC, cfg, seed=0)
    l_cal, m_cal = calql.critic_loss(low)
    l_cal = l_cal.detach()
    l_cql = cql.critic_loss(low)[0].detach()
    assert float(l_cal) == pytest.approx(float(l_cql), rel=1e-6)
    assert float(m_cal["calql_bound_rate"]) == 0.0
    l_cal_high, m_high = CalQL(SPEC, cfg, seed=0).critic_loss(high)
    l_cal_high = l_cal_high.detach()
    l_cql_high = CQL(SPEC, cfg, seed=0).critic_loss(high)[0].detach()
    assert float(m_high["calql_bound_rate"]) == 1.0
    assert float(l_cal_high) > float(l_cql_high) + 1.0  # floored at 50: the logsumexp is far larger


def _grad_owners(algo: CQL) -> dict[str, list[torch.nn.Parameter]]:
    groups = {"actor": list(algo.actor.parameters()), "critic": list(algo.critic.parameters()),
              "log_alpha": [algo.log_alpha]}
    if algo.actor_encoder is not None and algo.critic_encoder is not None:
        groups["actor_encoder"] = list(algo.actor_encoder.parameters())
        groups["critic_encoder"] = list(algo.critic_encoder.parameters())
    if algo.log_alpha_prime is not None:
        groups["log_alpha_prime"] = [algo.log_alpha_prime]
    return groups


@pytest.mark.parametrize("spec", [SPEC, IMAGE_SPEC], ids=["state", "image"])
def test_each_loss_term_reaches_only_its_own_parameters(spec):
    algo = CalQL(spec, CQLConfig(hidden_dims=(8,), num_actions=2, lagrange=True), seed=0, encoder=TINY_ENCODER)
    batch = batch_of(5, spec=spec)
    critic_loss, _, alpha_prime_loss = algo._critic_objective(batch)
    actor_loss, _ = algo.actor_loss(batch)
    temperature_loss, _ = algo.temperature_loss(batch)
    owners = {"critic": ({"critic", "critic_encoder"}, critic_loss),
              "alpha_prime": ({"log_alpha_prime"}, alpha_prime_loss),
              "actor": ({"actor", "actor_encoder"}, actor_loss),
              "temperature": ({"log_alpha"}, temperature_loss)}
    groups = _grad_owners(algo)
    frozen = [*algo.target_critic.parameters(),
              *(algo.target_critic_encoder.parameters() if algo.target_critic_encoder is not None else [])]
    for term, (allowed, loss) in owners.items():
        assert loss is not None
        params = [p for ps in groups.values() for p in ps]
        grads = torch.autograd.grad(loss, params, allow_unused=True, retain_graph=True)
        i = 0
        for name, ps in groups.items():
            for p, grad in zip(ps, grads[i:i + len(ps)], strict=True):
                reached = grad is not None and bool(grad.abs().sum() > 0)
                if name in allowed:
                    assert reached, f"{term} loss gave no gradient to {name} {tuple(p.shape)}"
                else:
                    assert not reached, f"{term} loss leaked a gradient into {name} {tuple(p.shape)}"
            i += len(ps)
    assert not any(p.requires_grad for p in frozen)


def test_lagrange_multiplier_grows_while_the_gap_exceeds_its_target():
    cfg = CQLConfig(hidden_dims=(8,), num_actions=2, lagrange=True, target_gap=-1e3, alpha_prime_lr=0.1)
    algo = CalQL(SPEC, cfg, seed=0)
    assert algo.log_alpha_prime is not None
    before = float(algo.log_alpha_prime.detach())
    for i in range(3):
        metrics = algo.update(batch_of(8, seed=i))
    assert float(algo.log_alpha_prime.detach()) > before  # gap far above -1000: alpha' rises
    assert "cql_alpha_prime" in metrics and "alpha_prime_loss" in metrics


@pytest.mark.parametrize("spec, lagrange", [(SPEC, True), (IMAGE_SPEC, False)], ids=["state-lagrange", "image"])
def test_save_and_load_give_identical_outputs_and_updates(spec, lagrange):
    cfg = CQLConfig(hidden_dims=(8,), num_actions=2, lagrange=lagrange)
    algo = CalQL(spec, cfg, seed=0, encoder=TINY_ENCODER)
    for i in range(3):
        algo.update(batch_of(6, seed=i, spec=spec))
    state = algo.state_dict()
    other = CalQL(spec, cfg, seed=99, encoder=TINY_ENCODER)
    other.load_state_dict(state)
    probe = batch_of(6, seed=10, spec=spec)
    policy_a, policy_b = algo.make_policy(), other.make_policy()
    obs0 = {k: v[0].numpy() for k, v in probe.obs.items()}
    np.testing.assert_array_equal(policy_a.act(obs0, deterministic=True), policy_b.act(obs0, deterministic=True))
    m_a, m_b = metrics_to_floats(algo.update(probe)), metrics_to_floats(other.update(probe))
    assert m_a == m_b
    for (name, p), q in zip(algo.critic.named_parameters(), other.critic.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=0, msg=name)


def _bandit_batch(b: int, g: torch.Generator) -> TransitionBatch:
    """A one-step task: reward ``1 - max |a - (s0, -s1)|`` (success: within 0.3); then the episode ends.

    The data is mixed quality: half uniform-random actions, half near-perfect ones."""
    s = torch.rand(b, 2, generator=g) * 2 - 1
    good = torch.stack([s[:, 0], -s[:, 1]], dim=1) + 0.1 * torch.randn(b, 2, generator=g)
    a = torch.where(torch.rand(b, 1, generator=g) < 0.5, good.clamp(-1, 1), torch.rand(b, 2, generator=g) * 2 - 1)
    r = 1.0 - (a - torch.stack([s[:, 0], -s[:, 1]], 1)).abs().max(dim=1).values
    ones = torch.ones(b, dtype=torch.bool)
    return TransitionBatch(obs={"state": s}, action=a, reward=r, discount=torch.zeros(b), terminated=ones,
                           truncated=~ones, next_obs={"state": s}, mc_return=r,
                           is_intervention=~ones, policy_version=torch.zeros(b, dtype=torch.int64),
                           actor_id=torch.zeros(b, dtype=torch.int32), episode_id=torch.arange(b))


def test_calql_solves_a_one_step_task_from_mixed_offline_data_in_seconds():
    cfg = LearnerConfig(algorithm="calql", cql=CQLConfig(hidden_dims=(64, 64), num_actions=4, actor_lr=1e-3,
                                                          critic_lr=1e-3, alpha_lr=1e-3, alpha=1.0,
                                                          init_temperature=0.01))
    algo = build_algorithm(SPEC, cfg)
    g = torch.Generator().manual_seed(0)
    policy = algo.make_policy()
    probe = _bandit_batch(200, torch.Generator().manual_seed(123))

    def success() -> float:
        policy.load_weights(algo.policy_weights())
        acts = np.stack([policy.act({"state": s.numpy()}, deterministic=True) for s in probe.obs["state"]])
        target = torch.stack([probe.obs["state"][:, 0], -probe.obs["state"][:, 1]], 1).numpy()
        return float(np.mean(np.abs(acts - target).max(axis=1) < 0.3))

    before = success()
    for _ in range(400):
        algo.update(_bandit_batch(128, g))
    after = success()
    assert before < 0.2, before
    assert after > 0.8, (before, after)


def test_returns_fn_uses_the_learner_reward_transform_and_failure_rule():
    cfg = LearnerConfig(algorithm="calql", cql=CQLConfig(gamma=0.5),
                        reward=RewardConfig(scale=10.0, bias=-5.0, sparse=True, negative=0.0))
    fn = returns_fn(cfg)
    np.testing.assert_allclose(fn(np.zeros(3, np.float32), False), [-10.0, -10.0, -10.0])  # -5 / (1 - 0.5)
    np.testing.assert_allclose(fn(np.array([0.0, 1.0], np.float32), True), [-5 + 0.5 * 5, 5.0])


def test_state_normalisation_is_saved_and_shipped_with_the_policy():
    algo = CalQL(SPEC, CQLConfig(hidden_dims=(8,), num_actions=2), seed=0)
    mean, std = np.array([0.5, -1.0], np.float32), np.array([2.0, 0.25], np.float32)
    algo.set_obs_normalization(mean, std)
    obs = {"state": np.array([1.5, -0.5], np.float32)}
    with torch.no_grad():
        want, _ = algo.actor.sample(torch.as_tensor((obs["state"] - mean) / std).unsqueeze(0), deterministic=True)
    policy = algo.make_policy()
    np.testing.assert_allclose(policy.act(obs, deterministic=True), want[0].numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(policy.act_torch(obs, deterministic=True), want[0].numpy(), rtol=1e-5, atol=1e-6)
    restored = CalQL(SPEC, CQLConfig(hidden_dims=(8,), num_actions=2), seed=5)
    restored.load_state_dict(algo.state_dict())
    torch.testing.assert_close(restored.obs_std, torch.as_tensor(std))
    # Weights published before normalisation existed (no obs_norm keys) load as the identity.
    old = {k: v for k, v in algo.policy_weights().items() if not k.startswith("obs_norm.")}
    policy.load_weights(old)
    with torch.no_grad():
        plain, _ = algo.actor.sample(torch.as_tensor(obs["state"]).unsqueeze(0), deterministic=True)
    np.testing.assert_allclose(policy.act(obs, deterministic=True), plain[0].numpy(), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="obs_norm.std"):
        policy.load_weights({**algo.policy_weights(), "obs_norm.std": np.zeros(2, np.float32)})


def test_the_backup_samples_next_actions_from_the_actors_view_of_the_next_state():
    """On the image path the actor and the target critics read s' through different encoders; the next actions of
    the backup must come from the actor's (a mix-up passes silently when both have the same feature size)."""
    encoder = EncoderConfig(channels=(4,), groups=2, spatial_blocks=2, out_dim=3, shift_pad=0)
    algo = CalQL(IMAGE_SPEC, CQLConfig(hidden_dims=(8,), num_actions=2), seed=0, encoder=encoder)
    batch = batch_of(3, spec=IMAGE_SPEC)
    seen: list[torch.Tensor] = []
    sample = algo._sample_action
    algo._sample_action = lambda x: (seen.append(x.detach().clone()), sample(x))[1]  # type: ignore[method-assign]
    algo.critic_loss(batch)
    with torch.no_grad():
        actor_view = torch.cat([algo._obs(batch.next_obs), algo.actor_encoder(batch.next_obs)], dim=-1)
        critic_view = torch.cat([algo._obs(batch.next_obs), algo.target_critic_encoder(batch.next_obs)], dim=-1)
    assert not torch.allclose(actor_view, critic_view)
    torch.testing.assert_close(seen[0], actor_view.repeat_interleave(2, dim=0))  # the backup's draw comes first
