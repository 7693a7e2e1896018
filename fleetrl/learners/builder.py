"""One place that turns a :class:`LearnerConfig` into the algorithm, the shipped policy and the return rule.

The distributed learner, ``fleetrl pretrain``, the actors, evaluation and the benchmarks all build through here, so
they always agree on the network shapes and on how ``mc_return`` is computed (Acme's builder idea).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from fleetrl.config import LearnerConfig
from fleetrl.core import Policy
from fleetrl.learners.calql import CQL, CalQL
from fleetrl.learners.flow_bc import FlowBC
from fleetrl.learners.flow_policy import FlowChunkPolicy
from fleetrl.learners.ogpo import OGPO
from fleetrl.learners.policy import make_policy
from fleetrl.learners.sac import SAC
from fleetrl.types import TransitionSpec, monte_carlo_returns

ALGORITHMS: dict[str, type[SAC]] = {"sac": SAC, "cql": CQL, "calql": CalQL}


def build_algorithm(spec: TransitionSpec, cfg: LearnerConfig, device: str | torch.device = "cpu",
                    seed: int | None = None) -> SAC | OGPO | FlowBC:
    """The configured algorithm (``learner.algorithm``) on ``device``, initialised from ``seed`` (default
    ``learner.seed``)."""
    seed = cfg.seed if seed is None else seed
    if cfg.algorithm == "ogpo":
        return OGPO(spec, cfg.ogpo, cfg.flow, device, seed, reward=cfg.reward, encoder=cfg.encoder)
    if cfg.algorithm == "flow-bc":
        return FlowBC(spec, cfg.flow, device, seed, encoder=cfg.encoder)
    cls = ALGORITHMS[cfg.algorithm]
    return cls(spec, cfg.algo(), device, seed, reward=cfg.reward,  # type: ignore[arg-type]
               encoder=cfg.encoder)


def build_policy(spec: TransitionSpec, cfg: LearnerConfig, seed: int | None = None) -> Policy:
    """The policy actors and robots run for this learner config (weights come from the learner): a chunked flow
    policy for ``ogpo`` / ``flow-bc``, else the tanh-Gaussian actor."""
    if cfg.algorithm in ("ogpo", "flow-bc"):
        return FlowChunkPolicy(spec, cfg.flow, cfg.encoder, seed)
    return make_policy(spec, cfg.algo().hidden_dims, cfg.encoder, seed)  # type: ignore[union-attr]


def returns_fn(cfg: LearnerConfig) -> Callable[[np.ndarray, bool], np.ndarray]:
    """``(rewards, terminated_last) -> mc_return`` of one finished episode, in the learner's reward units.

    Actors call it at episode end and the offline loader per dataset episode, so Cal-QL's floor is the same
    quantity online and offline (calibration stays on while fine-tuning)."""
    gamma, reward = cfg.algo().gamma, cfg.reward

    def compute(rewards: np.ndarray, terminated_last: bool) -> np.ndarray:
        return monte_carlo_returns(rewards, terminated_last, gamma, reward.scale, reward.bias,
                                   reward.transformed_negative())

    return compute
