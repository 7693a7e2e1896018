"""The learner as a Ray actor: Reverb batches in, algorithm updates, weights out, checkpoints to the run directory."""

from __future__ import annotations

import logging
import os
import pathlib
import threading
import time
from typing import Any

import ray

from fleetrl.config import TrainConfig, config_to_dict
from fleetrl.types import TransitionSpec

log = logging.getLogger(__name__)


@ray.remote(num_cpus=1, max_concurrency=4)
class LearnerWorker:
    """Samples from the replay server, updates the algorithm, publishes versioned weights, checkpoints.

    ``counters`` continue a resumed run: ``learner_steps``, ``env_steps`` (stored in replay before this start) and
    ``generation``. ``init_state`` is the algorithm state of the checkpoint being resumed, if any; ``obs_stats``
    the offline data's state statistics (``learner.normalize_obs``). ``epoch`` counts learner restarts in this
    launch: weights are published under it, so a learner restarted from an older checkpoint still replaces the
    crashed one's weights.
    """

    def __init__(self, cfg: TrainConfig, spec: TransitionSpec, replay: Any, weight_store: Any,
                 run_dir: str, counters: dict[str, int], init_state: dict[str, Any] | None = None,
                 obs_stats: dict[str, Any] | None = None, epoch: int = 0):
        import torch

        from fleetrl.distributed.replay import limit_tf_threads
        from fleetrl.learners.builder import build_algorithm

        torch.set_num_threads(cfg.learner.torch_threads)
        limit_tf_threads(1)
        want_cuda = cfg.learner.device in ("auto", "cuda") and torch.cuda.is_available()
        if cfg.learner.device == "cuda" and not want_cuda:
            raise RuntimeError("learner.device: 'cuda' was asked for but this process has no CUDA device")
        self.device = torch.device("cuda" if want_cuda else "cpu")
        self.cfg, self.spec = cfg, spec
        self._replay, self._store, self._epoch = replay, weight_store, epoch
        self._ckpt_dir = pathlib.Path(run_dir) / "checkpoints"
        self.algo = build_algorithm(spec, cfg.learner, self.device,
                                    seed=cfg.learner.seed + counters.get("generation", 0) + 1000 * epoch)
        if cfg.learner.normalize_obs and obs_stats is not None:  # from the offline data the replay loaded
            self.algo.set_obs_normalization(obs_stats["mean"], obs_stats["std"])
        if init_state is not None:  # a resumed or --init-from learner brings its own statistics
            self.algo.load_state_dict(init_state)
        self.learner_steps = int(counters.get("learner_steps", 0))
        self._initial_steps = self.learner_steps
        self._env_steps_base = int(counters.get("env_steps", 0))
        self._generation = int(counters.get("generation", 0))
        self.policy_version = -1
        self._metrics: dict[str, Any] = {}
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._last_checkpoint: dict[str, Any] | None = None
        self._started = time.monotonic()
        self._steps_at_start = self.learner_steps

    def pid(self) -> int:
        return os.getpid()

    def device_name(self) -> str:
        return str(self.device)

    def publish(self) -> int:
        """Publish the current policy weights, versioned by the learner step count."""
        self.policy_version = self.learner_steps
        ray.get(self._store.publish.remote(self.policy_version, self.algo.policy_weights(), self._epoch))
        return self.policy_version

    def run(self) -> dict[str, Any]:
        """Train until :meth:`stop`; always ends with a final checkpoint.

        If batches stop coming for ``recovery.probe_after_s`` and the replay no longer answers, the learner drops its
        sampler, finds the restarted replay server and samples from it (its own state is untouched)."""
        from fleetrl.distributed.replay_link import ReplayLink, StallProbe

        cfg = self.cfg
        self._started, self._steps_at_start = time.monotonic(), self.learner_steps
        self.publish()
        link = ReplayLink(self._replay)
        probe = StallProbe(link, cfg.recovery.probe_after_s)
        source, bc_source = self._source(link.address), self._bc_source(link.address)
        try:
            while not self._stop.is_set():
                batch = source.next(timeout_s=0.5)
                if batch is None:
                    if probe.waited():
                        source.close(timeout_s=0.1)  # its sampler thread may stay blocked on the dead server
                        if bc_source is not None:
                            bc_source.close(timeout_s=0.1)
                        if not link.reconnect(self._stop.is_set):
                            break
                        source, bc_source = self._source(link.address), self._bc_source(link.address)
                    continue
                probe.reset()
                if bc_source is None:
                    metrics = self.algo.update(batch)
                else:  # OGPO's success BC: a batch from `success` when it holds any (never waits for one)
                    metrics = self.algo.update(batch, bc_source.next(timeout_s=0.0))
                with self._lock:
                    self.learner_steps += 1
                    self._metrics = metrics
                if self.learner_steps % cfg.learner.publish_every == 0:
                    # Fire-and-forget: the store copies the weights; the learner never waits for actors.
                    self.policy_version = self.learner_steps
                    self._store.publish.remote(self.policy_version, self.algo.policy_weights(), self._epoch)
                if self.learner_steps % cfg.checkpoint.every_updates == 0:
                    self._try_checkpoint()
        finally:
            source.close()
            if bc_source is not None:
                bc_source.close(timeout_s=0.1)
        self.checkpoint()
        return self.stats()

    def _source(self, address: str) -> Any:
        from fleetrl.distributed.replay import make_batch_source

        return make_batch_source(address, self.spec, self.cfg, self.device)

    def _bc_source(self, address: str) -> Any:
        """Chunks of successful episodes (table ``success``) for OGPO's success BC; None when it is off."""
        from fleetrl.distributed.replay import SUCCESS_TABLE, BatchSource

        if not self.cfg.learner.success_table():
            return None
        return BatchSource(address, self.spec, self.cfg.learner.ogpo.success_batch_size, self.device,
                           self.cfg.learner.prefetch_batches, table=SUCCESS_TABLE)

    def _try_checkpoint(self) -> None:
        """A periodic checkpoint; skipped (and retried at the next one) while the replay server is restarting."""
        try:
            self.checkpoint()
        except ray.exceptions.RayActorError as exc:
            log.warning("checkpoint at step %d skipped: the replay server is unavailable (%s)", self.learner_steps,
                        type(exc).__name__)

    def checkpoint(self) -> dict[str, Any]:
        """Checkpoint the Reverb tables, then the learner with the counters at that moment."""
        from fleetrl.checkpoint import save_checkpoint

        replay = ray.get(self._replay.checkpoint.remote(), timeout=600)
        meta = {"learner_steps": self.learner_steps, "env_steps": self._env_steps_base + replay["inserts"],
                "policy_version": self.policy_version, "generation": self._generation, "time": time.time(),
                "replay_checkpoint": replay["path"], "config": config_to_dict(self.cfg),
                "spec": self.spec.to_dict()}
        path = save_checkpoint(self._ckpt_dir, self.algo.state_dict(), self.algo.policy_weights(), meta,
                               keep=self.cfg.checkpoint.keep)
        with self._lock:
            self._last_checkpoint = {"path": str(path), "learner_steps": self.learner_steps,
                                     "env_steps": meta["env_steps"], "time": meta["time"]}
        return self._last_checkpoint

    def stats(self) -> dict[str, Any]:
        from fleetrl.learners.sac import metrics_to_floats

        with self._lock:
            metrics = metrics_to_floats(self._metrics)  # one device sync for all of them
            steps = self.learner_steps
            elapsed = max(time.monotonic() - self._started, 1e-9)
            return {"learner_steps": steps, "policy_version": self.policy_version, "metrics": metrics,
                    "updates_per_s_avg": (steps - self._steps_at_start) / elapsed,
                    "last_checkpoint": self._last_checkpoint, "device": str(self.device), "epoch": self._epoch,
                    "initial_steps": self._initial_steps,
                    "node": ray.util.get_node_ip_address(), "node_id": ray.get_runtime_context().get_node_id()}

    def stop(self) -> None:
        self._stop.set()
