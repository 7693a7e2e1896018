"""Where a run's metric rows go: a JSONL file in the run directory, wandb (offline by default), the terminal."""

from __future__ import annotations

import json
import os
import pathlib
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table

from fleetrl.config import LoggingConfig

#: Terminal rows: (label, metric key, format).
_DISPLAY = [
    ("env steps", "env_steps", "{:,.0f}"),
    ("env steps/s", "env_steps_per_s", "{:.1f}"),
    ("learner steps", "learner_steps", "{:,.0f}"),
    ("updates/s", "updates_per_s", "{:.1f}"),
    ("update-to-data", "utd_ratio", "{:.3f}"),
    ("update-to-data (total)", "utd_ratio_total", "{:.3f}"),
    ("replay size", "replay_size", "{:,.0f}"),
    ("episode return", "episode_return", "{:.2f}"),
    ("success rate", "success_rate", "{:.2f}"),
    ("episodes", "episodes", "{:,.0f}"),
    ("policy lag (updates)", "policy_lag", "{:.0f}"),
    ("weight latency (s)", "weight_latency_s", "{:.3f}"),
    ("critic loss", "learner/critic_loss", "{:.4f}"),
    ("alpha", "learner/alpha", "{:.4f}"),
]


class MetricsSink:
    """Writes each metric row to ``metrics.jsonl``, wandb and the terminal."""

    def __init__(self, run_dir: pathlib.Path, cfg: LoggingConfig, config_dict: dict[str, Any], run_name: str,
                 console: Console | None = None):
        self.path = pathlib.Path(run_dir) / "metrics.jsonl"
        self._file = self.path.open("a", buffering=1)
        self._cfg = cfg
        self._console = console or Console()
        self._live: Live | None = None
        self._wandb = None
        if cfg.wandb and cfg.wandb_mode != "disabled":
            import wandb

            # Offline unless the user configured otherwise; WANDB_MODE set by the user still wins.
            mode = os.environ.get("WANDB_MODE", cfg.wandb_mode)
            self._wandb = wandb.init(project=cfg.wandb_project, name=run_name, dir=str(run_dir), mode=mode,
                                     config=config_dict, resume="allow", id=run_name.replace("/", "-"))
        if cfg.live and self._console.is_terminal:
            self._live = Live(self._table({}), console=self._console, refresh_per_second=2, transient=False)
            self._live.start()

    def _table(self, row: dict[str, Any]) -> Table:
        table = Table(title="fleetrl", show_header=False, min_width=40)
        for label, key, fmt in _DISPLAY:
            v = row.get(key)
            table.add_row(label, "-" if v is None else fmt.format(v))
        return table

    def write(self, row: dict[str, Any]) -> None:
        self._file.write(json.dumps(row) + "\n")
        if self._wandb is not None:
            self._wandb.log({k: v for k, v in row.items() if isinstance(v, int | float)}, step=int(row["env_steps"]))
        if self._live is not None:
            self._live.update(self._table(row))
        else:
            parts = [f"{label}={fmt.format(row[key])}" for label, key, fmt in _DISPLAY if row.get(key) is not None]
            self._console.print(" | ".join(parts), highlight=False)

    def close(self) -> None:
        if self._live is not None:
            self._live.stop()
        if self._wandb is not None:
            self._wandb.finish()
        self._file.close()
