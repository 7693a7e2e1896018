"""Versioned weight broadcast: the learner publishes, every actor long-polls for the newest version.

The store keeps only the newest weights, in Ray's object store (put by the store itself, so they outlive a learner
crash). An actor's subscriber thread waits on the store; a publish wakes every waiting actor at once, and the env
loop swaps to the new policy between two steps without ever waiting for the network.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import ray

from fleetrl.core import Policy, Weights

log = logging.getLogger(__name__)


@ray.remote(num_cpus=0)
class WeightStore:
    """Holds the newest ``(version, weights)``; an async Ray actor so many actors can wait on it at once.

    Publishes are ordered by ``(epoch, version)``: a learner restarted from a checkpoint publishes with a higher
    epoch, so its weights replace the crashed learner's even though its step count (the version) went back.
    Subscribers wait on a publish sequence number, which only grows."""

    def __init__(self) -> None:
        self._epoch, self._version, self._seq = -1, -1, 0
        self._ref: ray.ObjectRef | None = None
        self._published_at = 0.0
        self._changed = asyncio.Condition()

    async def publish(self, version: int, weights: Weights, epoch: int = 0) -> None:
        """Replace the weights if ``(epoch, version)`` is newer (late or repeated publishes are ignored)."""
        if (epoch, version) <= (self._epoch, self._version):
            return
        ref = ray.put(weights)
        async with self._changed:
            if (epoch, version) <= (self._epoch, self._version):  # a newer one landed while this one was being put
                return
            self._epoch, self._version, self._ref, self._published_at = epoch, version, ref, time.time()
            self._seq += 1
            self._changed.notify_all()

    async def wait_newer(self, known_seq: int,
                         timeout_s: float) -> tuple[int, int, int, list[ray.ObjectRef], float] | None:
        """``(seq, epoch, version, [weights_ref], publish_time)`` once a publish later than sequence number
        ``known_seq`` exists, or None after ``timeout_s``. The ref is wrapped in a list so Ray hands over the
        reference, not a copy."""
        async with self._changed:
            try:
                await asyncio.wait_for(self._changed.wait_for(lambda: self._seq > known_seq), timeout_s)
            except asyncio.TimeoutError:
                return None
            return self._seq, self._epoch, self._version, [self._ref], self._published_at

    def version(self) -> int:
        return self._version


class WeightSubscriber:
    """Background thread in an actor process that keeps :meth:`current` at the newest published policy."""

    def __init__(self, store: Any, template: Policy, timeout_s: float = 1.0):
        self._store, self._template, self._timeout_s = store, template, timeout_s
        self._current: tuple[int, Policy | None] = (-1, None)
        self._seq = 0
        self.epoch = -1
        """The learner epoch (restart count) of the weights held."""
        self.last_latency_s: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="weight-subscriber", daemon=True)
        self._thread.start()

    def current(self) -> tuple[int, Policy | None]:
        """Newest ``(version, policy)``; a plain attribute read, never blocks."""
        return self._current

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                got = ray.get(self._store.wait_newer.remote(self._seq, self._timeout_s))
                if got is None:
                    continue
                seq, epoch, version, (ref,), published_at = got
                weights = ray.get(ref)
                # Load into a fresh copy and swap the reference: the env loop keeps using the old policy object
                # for any step in flight, and never sees a half-loaded one.
                policy = copy.deepcopy(self._template)
                policy.load_weights(weights)
                self._current, self._seq, self.epoch = (version, policy), seq, epoch
                self.last_latency_s = time.time() - published_at
            except Exception:  # noqa: BLE001 - a store restart must not kill the actor; retry after a pause
                if self._stop.is_set():
                    return
                log.exception("weight subscriber: fetching weights failed; retrying")
                time.sleep(0.5)

    def wait_for_version(self, version: int, timeout_s: float) -> bool:
        """Block until at least ``version`` is loaded (tests and start-up only)."""
        deadline = time.monotonic() + timeout_s
        while self._current[0] < version:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.005)
        return True

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=self._timeout_s + 1.0)


def policy_factory_default(spec: Any, learner_cfg: Any) -> Callable[[int], Policy]:
    """Factory ``seed -> policy`` for the shipped policy of ``learner_cfg`` (imported lazily to keep workers light)."""

    def make(seed: int) -> Policy:
        from fleetrl.learners.builder import build_policy

        return build_policy(spec, learner_cfg, seed=seed)

    return make
