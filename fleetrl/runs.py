"""Run directories: create a new run, or check and load one to resume. Touches nothing when it refuses."""

from __future__ import annotations

import dataclasses
import pathlib
import time
from typing import Any

import yaml

from fleetrl.checkpoint import CheckpointError, load_checkpoint
from fleetrl.config import ConfigError, TrainConfig, apply_overrides, config_from_dict, config_to_dict, load_config

CONFIG_FILE = "config.yaml"
#: Keys a resumed run may change; everything else must equal the saved config.
RESUMABLE_KEYS = ("name", "run_root", "total_env_steps", "max_wall_s", "actors.num_sim", "logging", "placement",
                  "recovery", "robots", "teleop")


@dataclasses.dataclass
class RunPlan:
    """What a run starts from: its directory, config, counters and (when resuming) the algorithm state."""

    run_dir: pathlib.Path
    cfg: TrainConfig
    counters: dict[str, int]
    init_state: dict[str, Any] | None = None


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v and k != "kwargs":
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def config_differences(saved: TrainConfig, given: TrainConfig) -> list[str]:
    """Keys (outside :data:`RESUMABLE_KEYS`) whose values differ, as ``key: saved X, given Y``."""
    a, b = _flatten(config_to_dict(saved)), _flatten(config_to_dict(given))
    diffs = []
    for key in sorted(set(a) | set(b)):
        if any(key == r or key.startswith(r + ".") for r in RESUMABLE_KEYS):
            continue
        if a.get(key) != b.get(key):
            diffs.append(f"{key}: saved {a.get(key)!r}, given {b.get(key)!r}")
    return diffs


def new_run(cfg: TrainConfig) -> RunPlan:
    """A fresh run directory ``run_root/name-YYYYmmdd-HHMMSS`` with the config written into it."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    # Absolute: Ray workers (replay, learner) start in another working directory than the driver.
    run_dir = pathlib.Path(cfg.run_root).resolve() / f"{cfg.name}-{stamp}"
    n = 1
    while run_dir.exists():
        n += 1
        run_dir = pathlib.Path(cfg.run_root) / f"{cfg.name}-{stamp}-{n}"
    run_dir.mkdir(parents=True)
    (run_dir / CONFIG_FILE).write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
    return RunPlan(run_dir=run_dir, cfg=cfg, counters={"learner_steps": 0, "env_steps": 0, "generation": 0})


def saved_config(run_dir: pathlib.Path) -> TrainConfig:
    path = run_dir / CONFIG_FILE
    if not path.is_file():
        raise ConfigError(f"--resume {run_dir}: no {CONFIG_FILE} there; is it a fleetrl run directory?")
    return config_from_dict(yaml.safe_load(path.read_text()) or {})


def resume_run(run_dir: str | pathlib.Path, config_path: str | pathlib.Path | None = None,
               overrides: list[str] | None = None) -> RunPlan:
    """Check ``run_dir`` and its newest checkpoint. Overrides apply on top of the saved config (or of
    ``config_path`` if given); the result may differ from the saved config only in :data:`RESUMABLE_KEYS`."""
    run_dir = pathlib.Path(run_dir).resolve()
    if not run_dir.is_dir():
        raise ConfigError(f"--resume {run_dir}: no such run directory")
    saved = saved_config(run_dir)
    if config_path is not None:
        cfg = load_config(config_path, overrides)
    else:
        cfg = config_from_dict(apply_overrides(config_to_dict(saved), list(overrides or [])))
    diffs = config_differences(saved, cfg)
    if diffs:
        raise ConfigError(f"--resume {run_dir}: the config does not match the saved run: " + "; ".join(diffs))
    try:
        ckpt = load_checkpoint(run_dir)
    except CheckpointError as exc:
        raise ConfigError(f"--resume {run_dir}: {exc}") from exc
    meta = ckpt["meta"]
    counters = {k: int(meta[k]) for k in ("learner_steps", "env_steps")}
    counters["generation"] = int(meta.get("generation", 0)) + 1
    return RunPlan(run_dir=run_dir, cfg=cfg, counters=counters, init_state=ckpt["algorithm"])


def init_from(plan: RunPlan, checkpoint: str | pathlib.Path) -> RunPlan:
    """``fleetrl train --init-from CKPT``: the new run starts from the checkpoint's algorithm state (e.g. ``fleetrl
    pretrain``'s), with fresh counters. Refused, naming what differs, if the checkpoint's observation/action schema
    or network shapes do not fit this run's config."""
    from fleetrl.envs.gym_adapter import transition_spec
    from fleetrl.learners.builder import build_algorithm
    from fleetrl.types import TransitionSpec

    try:
        ckpt = load_checkpoint(checkpoint)
    except CheckpointError as exc:
        raise ConfigError(f"--init-from {checkpoint}: {exc}") from exc
    spec = transition_spec(plan.cfg.env)
    saved = TransitionSpec.from_dict(ckpt["meta"]["spec"])
    if saved != spec:
        keys = sorted(k for k in set(saved.obs) | set(spec.obs) if saved.obs.get(k) != spec.obs.get(k))
        what = f"observation keys {keys}" if keys else f"action {saved.action} vs {spec.action}"
        raise ConfigError(f"--init-from {checkpoint}: the checkpoint's env schema differs from env.id "
                          f"{plan.cfg.env.id!r} in {what}")
    try:  # the exact check: the state loads into this config's algorithm
        build_algorithm(spec, plan.cfg.learner).load_state_dict(ckpt["algorithm"])
    except (RuntimeError, ValueError, KeyError) as exc:
        raise ConfigError(f"--init-from {checkpoint}: its learner state does not fit this config's learner "
                          f"(learner.algorithm / hidden_dims / num_critics / encoder must match): {exc}") from exc
    return dataclasses.replace(plan, init_state=ckpt["algorithm"])
