"""``fleetrl`` command line: train, eval."""

from __future__ import annotations

import json
import logging
import pathlib
import sys
from typing import Annotated

import typer
from rich.console import Console

from fleetrl.config import ConfigError, load_config

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Distributed actor-learner RL: Ray actors -> Reverb replay -> PyTorch learner -> weights back.")
console = Console(stderr=True)

OVERRIDES_HELP = "Config overrides KEY=VALUE, e.g. actors.num_sim=4 learner.batch_size=128 (values are YAML)."


def _fail(msg: str) -> None:
    console.print(f"[bold red]error:[/] {msg}", highlight=False, soft_wrap=True)
    raise typer.Exit(code=2)


@app.command()
def train(
    overrides: Annotated[list[str] | None, typer.Argument(help=OVERRIDES_HELP, show_default=False)] = None,
    config: Annotated[pathlib.Path | None, typer.Option("--config", "-c", help="YAML config file.")] = None,
    resume: Annotated[pathlib.Path | None, typer.Option(help="Continue the run in this run directory.")] = None,
    address: Annotated[str | None, typer.Option(help="Ray cluster address ('auto' joins a running cluster).")] = None,
) -> None:
    """Train with sim actors, a Reverb replay server and a learner (defaults: local Ray, 2 actors, CPU)."""
    from fleetrl.envs.gym_adapter import transition_spec
    from fleetrl.runs import new_run, resume_run

    try:
        cfg = load_config(config, overrides or []) if resume is None else None
        if cfg is not None:
            transition_spec(cfg.env)  # an env that cannot be made fails here, before any directory or process
        plan = resume_run(resume, config, overrides or []) if resume is not None else new_run(cfg)
    except (ConfigError, ValueError) as exc:
        _fail(str(exc))
    logging.basicConfig(level=logging.WARNING)
    from fleetrl.distributed.launcher import train as run_train

    console.print(f"run directory: {plan.run_dir}", highlight=False)
    summary = run_train(plan, address=address)
    console.print_json(json.dumps(summary))


@app.command("eval")
def eval_(
    checkpoint: Annotated[pathlib.Path, typer.Option(help="Checkpoint file, checkpoints dir or run dir.")],
    episodes: Annotated[int, typer.Option(min=1, help="Episodes to run.")] = 10,
    seed: Annotated[int, typer.Option(help="Seed of the first episode (the others follow it).")] = 12345,
    video: Annotated[pathlib.Path | None, typer.Option(help="Write the first episode as .mp4 or .gif.")] = None,
) -> None:
    """Run a checkpoint's policy deterministically and report return and success."""
    from fleetrl.checkpoint import CheckpointError
    from fleetrl.evaluate import evaluate

    try:
        result = evaluate(checkpoint, episodes=episodes, seed=seed, video=video)
    except CheckpointError as exc:
        _fail(str(exc))
    print(json.dumps(result))


def main() -> None:  # pragma: no cover - console entry point alias
    sys.exit(app())


if __name__ == "__main__":  # pragma: no cover
    main()
