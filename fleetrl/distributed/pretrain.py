"""``fleetrl pretrain``: train on the offline table only and write a checkpoint for ``fleetrl train --init-from``.

One process: an in-process Reverb server holds table ``offline`` (loaded exactly as in a run), the learner samples
it through Reverb's dataset path, and checkpoints go to ``RUN_DIR/checkpoints`` in the format ``train`` writes. At
the end the pretrained policy is evaluated on the env (``offline.pretrain_eval_episodes``). Ctrl-C stops cleanly
with a checkpoint of the updates made so far.
"""

from __future__ import annotations

import json
import logging
import pathlib
import time
from typing import Any

import torch
from rich.console import Console

from fleetrl.checkpoint import save_checkpoint
from fleetrl.config import ConfigError, config_to_dict
from fleetrl.progress import MetricsSink
from fleetrl.runs import RunPlan

log = logging.getLogger(__name__)


def pretrain(plan: RunPlan, stop: Any = None) -> dict[str, Any]:
    """Run ``offline.pretrain_updates`` updates on offline batches; returns a summary with the eval result."""
    import reverb

    from fleetrl.distributed.offline import load_offline, offline_table
    from fleetrl.distributed.replay import limit_tf_threads, make_batch_source
    from fleetrl.envs.gym_adapter import transition_spec
    from fleetrl.evaluate import evaluate
    from fleetrl.learners.builder import build_algorithm, returns_fn
    from fleetrl.learners.sac import metrics_to_floats

    cfg, run_dir = plan.cfg, plan.run_dir
    if not cfg.offline.datasets:
        raise ConfigError("offline.datasets: fleetrl pretrain needs at least one offline dataset")
    torch.set_num_threads(cfg.learner.torch_threads)
    limit_tf_threads(1)
    device = torch.device("cuda" if cfg.learner.device != "cpu" and torch.cuda.is_available() else "cpu")
    spec = transition_spec(cfg.env)
    server = reverb.Server(tables=[offline_table(spec, cfg.offline.capacity, horizon=cfg.learner.horizon())])
    address = f"localhost:{server.port}"
    # Progress goes to stderr: stdout carries only the JSON summary (`fleetrl pretrain | jq`, scripts).
    sink = MetricsSink(run_dir, cfg.logging, config_to_dict(cfg), run_name=run_dir.name, console=Console(stderr=True))
    source = None
    try:
        loaded = load_offline(reverb.Client(address), spec, cfg.offline.datasets, cfg.offline.capacity,
                              returns_fn(cfg.learner), horizon=cfg.learner.horizon())
        log.warning("offline table: %d transitions from %d episodes", loaded["transitions"], loaded["episodes"])
        algo = build_algorithm(spec, cfg.learner, device)
        if cfg.learner.normalize_obs and loaded["obs_stats"] is not None:
            algo.set_obs_normalization(loaded["obs_stats"]["mean"], loaded["obs_stats"]["std"])
        if plan.init_state is not None:
            algo.load_state_dict(plan.init_state)
        source = make_batch_source(address, spec, cfg, device, offline_only=True)
        steps, t0, last_row = 0, time.monotonic(), time.monotonic()
        metrics: dict[str, Any] = {}

        def save() -> pathlib.Path:
            meta = {"learner_steps": steps, "env_steps": 0, "policy_version": steps, "generation": 0,
                    "time": time.time(), "phase": "pretrain", "offline": loaded, "config": config_to_dict(cfg),
                    "spec": spec.to_dict(), "replay_checkpoint": None}
            return save_checkpoint(run_dir / "checkpoints", algo.state_dict(), algo.policy_weights(), meta,
                                   keep=cfg.checkpoint.keep)

        interrupted = False
        try:
            while steps < cfg.offline.pretrain_updates and not (stop is not None and stop.is_set()):
                batch = source.next(timeout_s=5.0)
                if batch is None:
                    continue
                metrics = algo.update(batch)
                steps += 1
                if steps % cfg.checkpoint.every_updates == 0:
                    save()
                now = time.monotonic()
                if now - last_row >= cfg.logging.interval_s or steps == cfg.offline.pretrain_updates:
                    sink.write({"time_s": now - t0, "learner_steps": steps, "updates_per_s": steps / (now - t0),
                                **{f"learner/{k}": v for k, v in metrics_to_floats(metrics).items()}})
                    last_row = now
        except KeyboardInterrupt:
            interrupted = True
            log.warning("interrupted: saving a checkpoint of %d updates", steps)
        path = save()
    finally:
        if source is not None:
            source.close()
        sink.close()
        server.stop()
    summary: dict[str, Any] = {"run_dir": str(run_dir), "checkpoint": str(path), "learner_steps": steps,
                               "interrupted": interrupted, "offline_transitions": loaded["transitions"],
                               "offline_episodes": loaded["episodes"],
                               "seconds": time.monotonic() - t0}
    if cfg.offline.pretrain_eval_episodes and not interrupted:
        result = evaluate(path, episodes=cfg.offline.pretrain_eval_episodes, seed=cfg.actors.seed + 10_000)
        summary.update(eval_success_rate=result["success_rate"], eval_return_mean=result["return_mean"])
    (run_dir / "pretrain_summary.json").write_text(json.dumps(summary, indent=1))
    return summary
