"""``fleetrl`` command line: train, pretrain, eval, envs, collect, view, status; the robot and people commands
(robot-server, attach, detach, label, teleop, console) come from :mod:`fleetrl.cli_fleet`, reward from
:mod:`fleetrl.cli_reward`."""

from __future__ import annotations

import json
import logging
import pathlib
import sys
from typing import Annotated

import typer
from rich.console import Console

from fleetrl.cli_common import console, fail
from fleetrl.cli_fleet import open_input_device, register
from fleetrl.cli_reward import reward_app
from fleetrl.config import ConfigError, load_config

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Distributed actor-learner RL: Ray actors -> Reverb replay -> PyTorch learner -> weights back.")

app.add_typer(reward_app, name="reward")

OVERRIDES_HELP = "Config overrides KEY=VALUE, e.g. actors.num_sim=4 learner.batch_size=128 (values are YAML)."


@app.command()
def train(
    overrides: Annotated[list[str] | None, typer.Argument(help=OVERRIDES_HELP, show_default=False)] = None,
    config: Annotated[pathlib.Path | None, typer.Option("--config", "-c", help="YAML config file.")] = None,
    resume: Annotated[pathlib.Path | None, typer.Option(help="Continue the run in this run directory.")] = None,
    init_from: Annotated[pathlib.Path | None, typer.Option(
        "--init-from", help="Start a new run from this checkpoint's learner (e.g. one `fleetrl pretrain` wrote): "
        "file, checkpoints dir or run dir.")] = None,
    address: Annotated[str | None, typer.Option(help="Ray cluster address ('auto' joins a running cluster).")] = None,
) -> None:
    """Train with sim actors, a Reverb replay server and a learner (defaults: local Ray, 2 actors, CPU)."""
    import shutil

    from fleetrl.datasets.sources import check_first_episodes
    from fleetrl.envs.gym_adapter import transition_spec
    from fleetrl.runs import init_from as init_plan
    from fleetrl.runs import new_run, resume_run

    if resume is not None and init_from is not None:
        fail("--resume continues a run from its own checkpoint; --init-from starts a new one: give one of them")
    plan = None
    try:
        cfg = load_config(config, overrides or []) if resume is None else None
        if cfg is not None:
            spec = transition_spec(cfg.env)  # an env that cannot be made fails here, before any directory or process
            check_first_episodes(spec, cfg.offline.datasets, "offline")  # and so does data of another env
            check_first_episodes(spec, cfg.demos.datasets, "demos")
        plan = resume_run(resume, config, overrides or []) if resume is not None else new_run(cfg)
        if init_from is not None:
            plan = init_plan(plan, init_from)
    except (ConfigError, ValueError) as exc:
        if plan is not None and resume is None:
            shutil.rmtree(plan.run_dir, ignore_errors=True)  # the run never started: leave no empty directory
        fail(str(exc))
    logging.basicConfig(level=logging.WARNING)
    from fleetrl.datasets import DatasetError
    from fleetrl.distributed.launcher import train as run_train

    console.print(f"run directory: {plan.run_dir}", highlight=False)
    try:
        summary = run_train(plan, address=address)
    except DatasetError as exc:
        fail(str(exc))
    console.print_json(json.dumps(summary))


@app.command()
def pretrain(
    overrides: Annotated[list[str] | None, typer.Argument(help=OVERRIDES_HELP, show_default=False)] = None,
    config: Annotated[pathlib.Path | None, typer.Option("--config", "-c", help="YAML config file.")] = None,
) -> None:
    """Train on the offline datasets only (offline.*) and write a checkpoint for `fleetrl train --init-from`."""
    import shutil

    from fleetrl.datasets import DatasetError
    from fleetrl.envs.gym_adapter import transition_spec
    from fleetrl.runs import new_run

    try:
        cfg = load_config(config, overrides or [])
        if not cfg.offline.datasets:
            raise ConfigError("offline.datasets: fleetrl pretrain needs at least one offline dataset")
        transition_spec(cfg.env)
    except (ConfigError, ValueError) as exc:
        fail(str(exc))
    logging.basicConfig(level=logging.WARNING)
    from fleetrl.distributed.pretrain import pretrain as run_pretrain

    plan = new_run(cfg)
    console.print(f"run directory: {plan.run_dir}", highlight=False)
    try:
        summary = run_pretrain(plan)
    except DatasetError as exc:
        if not (plan.run_dir / "checkpoints").exists():  # refused before any update: leave no half-made run
            shutil.rmtree(plan.run_dir, ignore_errors=True)
        fail(str(exc))
    print(json.dumps(summary))  # stdout: machine-readable (also in RUN_DIR/pretrain_summary.json)


@app.command("eval")
def eval_(
    checkpoint: Annotated[pathlib.Path, typer.Option(help="Checkpoint file, checkpoints dir or run dir.")],
    episodes: Annotated[int, typer.Option(min=1, help="Episodes to run.")] = 10,
    seed: Annotated[int, typer.Option(help="Seed of the first episode (the others follow it).")] = 12345,
    video: Annotated[pathlib.Path | None, typer.Option(help="Write the first episode as .mp4 or .gif.")] = None,
    stochastic: Annotated[bool, typer.Option(help="Sample actions as the actors do in training (default: the "
                                                  "deterministic action).")] = False,
) -> None:
    """Run a checkpoint's policy (deterministically unless --stochastic) and report return and success."""
    from fleetrl.checkpoint import CheckpointError
    from fleetrl.evaluate import evaluate

    try:
        result = evaluate(checkpoint, episodes=episodes, seed=seed, video=video, stochastic=stochastic)
    except CheckpointError as exc:
        fail(str(exc))
    print(json.dumps(result))


def _env_kwargs(pairs: list[str] | None) -> dict:
    """``KEY=VALUE`` pairs (values are YAML, parsed as config overrides are) as ``gymnasium.make`` keywords."""
    from fleetrl.config import apply_overrides

    try:
        return apply_overrides({}, list(pairs or []))
    except ConfigError as exc:
        fail(f"--env-kwarg: {exc}")


@app.command()
def envs(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """List fleetrl's registered envs with their spaces and time limits."""
    from rich.table import Table

    from fleetrl.envs.registry import describe_env, fleet_env_ids

    rows = [describe_env(env_id) for env_id in fleet_env_ids()]
    if as_json:
        print(json.dumps(rows, indent=1))
        return
    table = Table("id", "observation space", "action space", "limit", show_lines=False)
    table.columns[0].no_wrap = True
    for r in rows:
        limit = r["max_episode_steps"] or (f"horizon {r['horizon']}" if r["horizon"] else "-")
        table.add_row(r["id"], r["observation_space"], r["action_space"], str(limit))
    Console().print(table)


EnvKwargs = Annotated[list[str] | None, typer.Option("--env-kwarg", help="gymnasium.make keyword KEY=VALUE "
                                                     "(repeatable), e.g. image=true image_size=128.")]


@app.command()
def collect(
    env: Annotated[str, typer.Option(help="Registered env id, e.g. fleetrl/WidowXLift-v0.")],
    episodes: Annotated[int, typer.Option(help="Number of episodes.")],
    out: Annotated[pathlib.Path, typer.Option(help="HDF5 file to write (docs/datasets.md).")],
    policy: Annotated[str, typer.Option(help="scripted (WidowX tasks) or random.")] = "scripted",
    noise: Annotated[float, typer.Option(help="Expert noise: 0 = the expert as is (see docs/envs.md).")] = 0.0,
    seed: Annotated[int, typer.Option(help="Seed of the first episode (episode i uses seed + i).")] = 0,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing file (only once all episodes are in).")] = False,
    teleop: Annotated[str | None, typer.Option(help="Demonstrate yourself with this input device (keyboard, "
                                               "gamepad, spacemouse; recorded with --recording): --policy teleop.")
                      ] = None,
    recording: Annotated[pathlib.Path | None, typer.Option(help="--teleop recorded: the input states to replay.")
                         ] = None,
    rate_hz: Annotated[float, typer.Option(help="--teleop: control steps per second.")] = 5.0,
    env_kwarg: EnvKwargs = None,
) -> None:
    """Collect an episode dataset with a scripted or random policy, or demonstrations with --teleop DEVICE (for
    demos.datasets)."""
    from fleetrl.datasets import DatasetError
    from fleetrl.envs.rollout import RolloutError
    from fleetrl.envs.rollout import collect as run_collect

    device = None
    if teleop is not None:
        policy = "teleop"
        device = open_input_device(teleop, recording, "--teleop")

    def progress(i: int, episode) -> None:
        console.print(f"episode {i + 1}/{episodes}: {episode.length} steps, success {episode.is_success}",
                      highlight=False)

    try:
        summary = run_collect(env, episodes, out, policy=policy, noise=noise, seed=seed, overwrite=overwrite,
                              progress=progress, device=device, rate_hz=rate_hz if device else None,
                              **_env_kwargs(env_kwarg))
    except (RolloutError, DatasetError) as exc:
        fail(str(exc))
    print(json.dumps(summary))
    if summary["interrupted"]:
        raise typer.Exit(code=130)


@app.command()
def view(
    env: Annotated[str, typer.Option(help="Registered env id, e.g. fleetrl/WidowXStack-v0.")],
    out: Annotated[pathlib.Path, typer.Option(help="Video file, .mp4 or .gif.")] = pathlib.Path("episode.mp4"),
    policy: Annotated[str, typer.Option(help="scripted (WidowX tasks) or random.")] = "scripted",
    noise: Annotated[float, typer.Option(help="Expert noise.")] = 0.0,
    seed: Annotated[int, typer.Option(help="Episode seed.")] = 0,
    size: Annotated[int, typer.Option(help="Frame size in pixels (WidowX envs).")] = 256,
    env_kwarg: EnvKwargs = None,
) -> None:
    """Render one episode of a policy to a video."""
    from fleetrl.envs.rollout import RolloutError, record_video

    try:
        summary = record_video(env, out, policy=policy, noise=noise, seed=seed, size=size, **_env_kwargs(env_kwarg))
    except RolloutError as exc:
        fail(str(exc))
    print(json.dumps(summary))


@app.command()
def status(
    run: Annotated[str, typer.Option(help="Run name (its newest run), run directory name under --run-root, or path.")],
    run_root: Annotated[pathlib.Path, typer.Option(help="Where runs live (config run_root).")] = pathlib.Path("runs"),
    once: Annotated[bool, typer.Option("--once", help="Print the status once and exit.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the raw status JSON on stdout and exit.")] = False,
) -> None:
    """Show a run's actors, replay tables and learner: live in a terminal (refreshed every second until Ctrl-C),
    printed once when piped or with --once."""
    import os
    import time

    from fleetrl.status_view import StatusError, find_run, read_status, read_status_text, render, watch

    try:
        run_dir = find_run(run, run_root)
        if as_json:
            sys.stdout.write(read_status_text(run_dir).rstrip("\n") + "\n")
            return
        out = Console()
        if not out.is_terminal and "COLUMNS" not in os.environ:
            out = Console(width=160)  # piped or captured: 80 columns would fold the actor table's 13 columns
        if once or not out.is_terminal:  # a live view needs a terminal; elsewhere it would print nothing until Ctrl-C
            out.print(render(read_status(run_dir), time.time()))
            return
        try:
            watch(run_dir, out)
        except KeyboardInterrupt:
            pass
    except StatusError as exc:
        fail(str(exc))


register(app)  # robot-server, attach, detach, label, teleop, console


def main() -> None:  # pragma: no cover - console entry point alias
    sys.exit(app())


if __name__ == "__main__":  # pragma: no cover
    main()
