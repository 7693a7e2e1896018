"""The small set of interfaces every part of fleetrl is written against.

An :class:`Algorithm` turns batches into metrics and knows nothing about processes. A :class:`Policy` is what ships
to actors and robots: numpy observation in, action out, loadable from published weights. A
:class:`VariableSource` hands an actor the newest versioned policy; a :class:`Saveable` round-trips its state.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

import numpy as np

from fleetrl.types import TransitionBatch


class EpisodeAborted(RuntimeError):
    """An env could not finish its episode cleanly (a robot link failed, a server refused a command). The env loop
    drops the episode, stores nothing of it, and starts the next one with a reset."""


Weights = dict[str, np.ndarray]
"""Published policy weights: parameter name -> numpy array (no torch objects cross process boundaries)."""


@runtime_checkable
class Saveable(Protocol):
    """State that can be saved and restored exactly."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@runtime_checkable
class Algorithm(Saveable, Protocol):
    """A training algorithm: batch in, metrics out. Pure PyTorch; imports neither Ray nor Reverb."""

    def update(self, batch: TransitionBatch) -> dict[str, Any]:
        """One update; metrics are detached 0-d tensors so the caller syncs with the device only when it logs."""
        ...

    def policy_weights(self) -> Weights:
        """The weights the actors' :class:`Policy` needs (and nothing of the critics or optimisers)."""
        ...


@runtime_checkable
class Policy(Protocol):
    """The part of a trained agent that acts: what actors and robots run."""

    def act(self, obs: Mapping[str, np.ndarray], deterministic: bool = False) -> np.ndarray: ...

    def load_weights(self, weights: Weights) -> None: ...


@runtime_checkable
class StatefulPolicy(Policy, Protocol):
    """A policy that keeps state between steps (a flow policy's action chunk in hand). ``reset`` drops it; the env
    loop calls it at every episode start and after a step a person chose, so the policy plans afresh."""

    def reset(self) -> None: ...


def reset_policy(policy: Policy | None) -> None:
    """``policy.reset()`` for a :class:`StatefulPolicy`; nothing for a stateless one."""
    if isinstance(policy, StatefulPolicy):
        policy.reset()


@runtime_checkable
class VariableSource(Protocol):
    """What an actor reads its policy from: the newest ``(version, policy)``, ``(-1, None)`` before any weights.

    Implemented by ``distributed.weights.WeightSubscriber``; the env loop calls it every step, so it must never
    block."""

    def current(self) -> tuple[int, Policy | None]: ...
