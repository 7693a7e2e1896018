"""Learner checkpoints on disk: atomic writes, a ``latest.json`` pointer, pruning, strict loading.

A checkpoint is one ``torch.save`` file holding the algorithm state plus ``meta``: counters (learner steps, env
steps stored in replay, policy version, run generation), the config and the transition spec. The Reverb tables are
checkpointed beside it under ``RUN_DIR/replay`` at the same moment.
"""

from __future__ import annotations

import json
import os
import pathlib
import tempfile
from typing import Any

import torch

LATEST = "latest.json"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable or does not belong to this run; the message names the file."""


def _atomic_write_bytes(path: pathlib.Path, write: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)  # atomic on POSIX: a crash leaves either the old file or the new one
    except BaseException:
        pathlib.Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)


def save_checkpoint(ckpt_dir: str | os.PathLike, algorithm_state: dict[str, Any], policy_weights: dict[str, Any],
                    meta: dict[str, Any], keep: int = 3) -> pathlib.Path:
    """Write ``learner-<steps>.pt`` and point ``latest.json`` at it; keep the newest ``keep`` files.

    ``policy_weights`` (what actors and robots run) are stored apart from the full algorithm state, so evaluation
    and deployment never need the critics or optimisers."""
    ckpt_dir = pathlib.Path(ckpt_dir)
    path = ckpt_dir / f"learner-{int(meta['learner_steps']):010d}.pt"
    _atomic_write_bytes(path, lambda fh: torch.save(
        {"algorithm": algorithm_state, "policy": policy_weights, "meta": meta}, fh))
    _atomic_write_bytes(ckpt_dir / LATEST, lambda fh: fh.write(json.dumps({"file": path.name, **{
        k: meta[k] for k in ("learner_steps", "env_steps", "policy_version", "generation")}}).encode()))
    for old in sorted(ckpt_dir.glob("learner-*.pt"))[:-keep]:
        old.unlink(missing_ok=True)
    return path


def resolve(path: str | os.PathLike) -> pathlib.Path:
    """A checkpoint file from a file path, a checkpoint directory or a run directory."""
    p = pathlib.Path(path)
    if p.is_file():
        return p
    for d in (p / "checkpoints", p):
        latest = d / LATEST
        if latest.is_file():
            try:
                name = json.loads(latest.read_text())["file"]
            except (ValueError, KeyError) as exc:
                raise CheckpointError(f"{latest}: unreadable pointer file ({exc})") from exc
            if not (d / name).is_file():
                raise CheckpointError(f"{latest}: points at {name}, which does not exist")
            return d / name
    raise CheckpointError(f"{p}: no checkpoint here (expected a .pt file or a directory with {LATEST})")


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load ``{"algorithm": ..., "policy": ..., "meta": ...}``; raises :class:`CheckpointError` naming the file."""
    file = resolve(path)
    try:
        data = torch.load(file, map_location=map_location, weights_only=False)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means the same thing to the user
        raise CheckpointError(f"{file}: cannot be loaded ({type(exc).__name__}: {exc})") from exc
    missing = [k for k in ("algorithm", "policy", "meta") if not isinstance(data, dict) or k not in data]
    if missing:
        raise CheckpointError(f"{file}: not a fleetrl checkpoint (missing {', '.join(missing)})")
    return data
