"""Learning algorithms (pure PyTorch; no Ray or Reverb imports)."""

from fleetrl.learners.builder import build_algorithm, build_policy, returns_fn
from fleetrl.learners.calql import CQL, CalQL
from fleetrl.learners.networks import MLP, CriticEnsemble, TanhGaussianActor, obs_vector
from fleetrl.learners.policy import GaussianPolicy, ImagePolicy, make_policy, policy_obs_dim, policy_obs_keys
from fleetrl.learners.sac import SAC, metrics_to_floats

__all__ = [
    "CQL",
    "MLP",
    "SAC",
    "CalQL",
    "CriticEnsemble",
    "GaussianPolicy",
    "ImagePolicy",
    "TanhGaussianActor",
    "build_algorithm",
    "build_policy",
    "make_policy",
    "metrics_to_floats",
    "obs_vector",
    "policy_obs_dim",
    "policy_obs_keys",
    "returns_fn",
]
