"""Learning algorithms (pure PyTorch; no Ray or Reverb imports)."""

from fleetrl.learners.networks import MLP, CriticEnsemble, TanhGaussianActor, obs_vector
from fleetrl.learners.policy import GaussianPolicy, policy_obs_dim, policy_obs_keys
from fleetrl.learners.sac import SAC, metrics_to_floats

__all__ = [
    "MLP",
    "SAC",
    "CriticEnsemble",
    "GaussianPolicy",
    "TanhGaussianActor",
    "metrics_to_floats",
    "obs_vector",
    "policy_obs_dim",
    "policy_obs_keys",
]
