"""``fleetrl`` command line: train, pretrain, eval, envs, collect, view, status, robot-server, attach, detach, label,
reward."""

from __future__ import annotations

import json
import logging
import pathlib
import sys
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from fleetrl.cli_reward import reward_app
from fleetrl.config import ConfigError, load_config

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Distributed actor-learner RL: Ray actors -> Reverb replay -> PyTorch learner -> weights back.")
console = Console(stderr=True)

app.add_typer(reward_app, name="reward")

OVERRIDES_HELP = "Config overrides KEY=VALUE, e.g. actors.num_sim=4 learner.batch_size=128 (values are YAML)."


def _fail(msg: str) -> None:
    console.print(f"[bold red]error:[/] {escape(msg)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code=2)


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

    from fleetrl.envs.gym_adapter import transition_spec
    from fleetrl.runs import init_from as init_plan
    from fleetrl.runs import new_run, resume_run

    if resume is not None and init_from is not None:
        _fail("--resume continues a run from its own checkpoint; --init-from starts a new one: give one of them")
    plan = None
    try:
        cfg = load_config(config, overrides or []) if resume is None else None
        if cfg is not None:
            transition_spec(cfg.env)  # an env that cannot be made fails here, before any directory or process
        plan = resume_run(resume, config, overrides or []) if resume is not None else new_run(cfg)
        if init_from is not None:
            plan = init_plan(plan, init_from)
    except (ConfigError, ValueError) as exc:
        if plan is not None and resume is None:
            shutil.rmtree(plan.run_dir, ignore_errors=True)  # the run never started: leave no empty directory
        _fail(str(exc))
    logging.basicConfig(level=logging.WARNING)
    from fleetrl.datasets import DatasetError
    from fleetrl.distributed.launcher import train as run_train

    console.print(f"run directory: {plan.run_dir}", highlight=False)
    try:
        summary = run_train(plan, address=address)
    except DatasetError as exc:
        _fail(str(exc))
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
        _fail(str(exc))
    logging.basicConfig(level=logging.WARNING)
    from fleetrl.distributed.pretrain import pretrain as run_pretrain

    plan = new_run(cfg)
    console.print(f"run directory: {plan.run_dir}", highlight=False)
    try:
        summary = run_pretrain(plan)
    except DatasetError as exc:
        if not (plan.run_dir / "checkpoints").exists():  # refused before any update: leave no half-made run
            shutil.rmtree(plan.run_dir, ignore_errors=True)
        _fail(str(exc))
    print(json.dumps(summary))  # stdout: machine-readable (also in RUN_DIR/pretrain_summary.json)


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


def _env_kwargs(pairs: list[str] | None) -> dict:
    """``KEY=VALUE`` pairs (values are YAML, parsed as config overrides are) as ``gymnasium.make`` keywords."""
    from fleetrl.config import apply_overrides

    try:
        return apply_overrides({}, list(pairs or []))
    except ConfigError as exc:
        _fail(f"--env-kwarg: {exc}")


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
        device = _open_input_device(teleop, recording, "--teleop")

    def progress(i: int, episode) -> None:
        console.print(f"episode {i + 1}/{episodes}: {episode.length} steps, success {episode.is_success}",
                      highlight=False)

    try:
        summary = run_collect(env, episodes, out, policy=policy, noise=noise, seed=seed, overwrite=overwrite,
                              progress=progress, device=device, rate_hz=rate_hz if device else None,
                              **_env_kwargs(env_kwarg))
    except (RolloutError, DatasetError) as exc:
        _fail(str(exc))
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
        _fail(str(exc))
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
        _fail(str(exc))


@app.command("robot-server")
def robot_server(
    backend: Annotated[str, typer.Option(help="sim (MuJoCo WidowX behind the socket) or interbotix (a real arm).")
                       ] = "sim",
    task: Annotated[str, typer.Option(help="sim backend: the WidowX task scene.")] = "reach",
    bind: Annotated[str, typer.Option(help="Address to listen on; anything but localhost needs --token.")
                    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port (Bridge servers use 5556).")] = 5556,
    token: Annotated[str | None, typer.Option(help="Shared token every request must carry (or FLEETRL_ROBOT_TOKEN).",
                                              envvar="FLEETRL_ROBOT_TOKEN")] = None,
    watchdog_s: Annotated[float, typer.Option(help="Hold the arm when no command arrives for this long.")] = 1.0,
) -> None:
    """Serve one WidowX (or its simulation) to robot actors, with the safety limits on the server side."""
    from fleetrl.robot.server import Safety, serve

    logging.basicConfig(level=logging.WARNING)
    kwargs = {"task": task} if backend == "sim" else {}
    try:
        serve(backend, bind, port, token, Safety(watchdog_s=watchdog_s), **kwargs)
    except (ValueError, RuntimeError) as exc:
        _fail(str(exc))


def _open_input_device(name: str, recording: pathlib.Path | None, option: str) -> object:
    """A person's input device by name, or ``recorded`` (replaying ``recording``); fails naming ``option``."""
    try:
        if name == "recorded":
            from fleetrl.teleop.client import RecordedDevice

            if recording is None:
                _fail(f"{option} recorded needs --recording FILE")
            return RecordedDevice.from_file(recording)
        from fleetrl.teleop.devices import DeviceUnavailable, open_device

        try:
            return open_device(name)
        except DeviceUnavailable as exc:
            _fail(str(exc))
    except (OSError, ValueError) as exc:
        _fail(str(exc))


_RUN_HELP = "Run name (its newest run), run directory name under --run-root, or path."
_RUN_ROOT_HELP = "Where runs live (config run_root)."


def _send(run: str, run_root: pathlib.Path, op: str, args: dict, wait_s: float) -> dict:
    """Deliver a command to a running experiment's driver and return its answer (or fail naming why)."""
    from fleetrl.distributed.control import ControlError, submit, wait_answer
    from fleetrl.status_view import StatusError, find_run, read_status

    try:
        run_dir = find_run(run, run_root)
        state = read_status(run_dir).get("state")
        if state != "running":
            _fail(f"--run {run}: the run in {run_dir} is not running (state {state!r})")
        answer = wait_answer(run_dir, submit(run_dir, op, args), wait_s)
    except (StatusError, ControlError) as exc:
        _fail(str(exc))
    if not answer.get("ok"):
        _fail(str(answer.get("error")))
    return answer


@app.command()
def attach(
    robot: Annotated[str, typer.Option(help="Name of the robot (shown in status), e.g. widowx_1.")],
    server: Annotated[str, typer.Option(help="HOST:PORT of its robot server (`fleetrl robot-server`).")],
    run: Annotated[str, typer.Option(help=_RUN_HELP)],
    fields: Annotated[list[str] | None, typer.Argument(
        help="More robots[i] fields KEY=VALUE (YAML values), e.g. resource=widowx_1 image_size=64 "
        "reward_classifier=/path/clf.pt.", show_default=False)] = None,
    token: Annotated[str | None, typer.Option(help="The server's shared token (or FLEETRL_ROBOT_TOKEN).",
                                              envvar="FLEETRL_ROBOT_TOKEN")] = None,
    run_root: Annotated[pathlib.Path, typer.Option(help=_RUN_ROOT_HELP)] = pathlib.Path("runs"),
    wait_s: Annotated[float, typer.Option(help="How long to wait for the run to take the robot on.")] = 120.0,
) -> None:
    """Add a robot actor to a running experiment (nothing else restarts); waits until the robot steps."""
    import time

    from fleetrl.config import ConfigError, apply_overrides
    from fleetrl.status_view import find_run, read_status

    try:
        extra = apply_overrides({}, list(fields or []))
    except ConfigError as exc:
        _fail(str(exc))
    spec = {**extra, "name": robot, "server": server, **({"token": token} if token else {})}
    answer = _send(run, run_root, "attach", {"robot": spec}, wait_s)
    actor_id = answer["actor_id"]
    console.print(f"robot {robot} joined as actor {actor_id}; waiting for its first steps ...")
    run_dir, deadline = find_run(run, run_root), time.monotonic() + wait_s
    while time.monotonic() < deadline:
        doc = read_status(run_dir)
        mine = [a for a in doc.get("actors", []) if a.get("id") == actor_id]
        if mine and (mine[0].get("env_steps") or 0) > 0:
            print(json.dumps({"robot": robot, "actor_id": actor_id, "node": mine[0].get("node"),
                              "env_steps": mine[0]["env_steps"]}))
            return
        gave_up = [e for e in doc.get("events", []) if e.get("component") == f"robot {robot}"
                   and str(e.get("action", "")).startswith("gave up")]
        if gave_up:
            _fail(f"robot {robot} left the run: {gave_up[-1].get('what')}")
        time.sleep(0.5)
    _fail(f"robot {robot} (actor {actor_id}) joined but has not stepped within {wait_s:.0f} s; see `fleetrl status "
          f"--run {run}` (its server unreachable? its resource on no node?)")


@app.command()
def detach(
    robot: Annotated[str, typer.Option(help="Name of the robot to remove from the run.")],
    run: Annotated[str, typer.Option(help=_RUN_HELP)],
    now: Annotated[bool, typer.Option("--now", help="Abort the episode in progress instead of finishing it.")
                   ] = False,
    run_root: Annotated[pathlib.Path, typer.Option(help=_RUN_ROOT_HELP)] = pathlib.Path("runs"),
    wait_s: Annotated[float, typer.Option(help="How long to wait for the episode to end and the data to flush.")
                      ] = 300.0,
) -> None:
    """Remove a robot actor from a running experiment: its episode finished (or aborted with --now), every episode
    it collected written to replay, the arm left at home."""
    answer = _send(run, run_root, "detach", {"robot": robot, "now": now}, wait_s)
    print(json.dumps({k: answer.get(k) for k in ("robot", "actor_id", "episodes_written", "steps_written",
                                                 "episodes_lost", "pending_episodes")}))


@app.command()
def label(
    robot: Annotated[str, typer.Option(help="Name of the robot whose episode is labelled.")],
    outcome: Annotated[str, typer.Argument(help="success or failure.")],
    run: Annotated[str, typer.Option(help=_RUN_HELP)],
    run_root: Annotated[pathlib.Path, typer.Option(help=_RUN_ROOT_HELP)] = pathlib.Path("runs"),
) -> None:
    """A person's verdict on a robot's episode in progress; it overrides the reward classifier and ends the
    episode (success: reward 1, terminal; failure: reward 0, truncated)."""
    if outcome not in ("success", "failure"):
        _fail(f"OUTCOME: expected success or failure, got {outcome!r}")
    _send(run, run_root, "label", {"robot": robot, "outcome": outcome}, 30.0)
    print(json.dumps({"robot": robot, "outcome": outcome}))


@app.command()
def teleop(
    actor: Annotated[int, typer.Option(help="Id of the actor to take over (see `fleetrl status`).")],
    run: Annotated[str | None, typer.Option(help=_RUN_HELP + " Not needed with --address and --token.")] = None,
    device: Annotated[str, typer.Option(help="keyboard, gamepad, spacemouse, or recorded (with --recording).")
                      ] = "keyboard",
    recording: Annotated[pathlib.Path | None, typer.Option(help="JSON lines of recorded input states to replay.")
                         ] = None,
    address: Annotated[str | None, typer.Option(help="The actor's teleop endpoint tcp://HOST:PORT (default: from "
                                                "the run's status.json).")] = None,
    token: Annotated[str | None, typer.Option(help="The run's teleop token (default: RUN_DIR/teleop_token).",
                                              envvar="FLEETRL_TELEOP_TOKEN")] = None,
    run_root: Annotated[pathlib.Path, typer.Option(help=_RUN_ROOT_HELP)] = pathlib.Path("runs"),
    rate_hz: Annotated[float, typer.Option(help="Commands per second while you hold control.")] = 50.0,
    duration_s: Annotated[float | None, typer.Option(help="Stop after this long (default: until Ctrl-C).")] = None,
) -> None:
    """Take over an actor of a running experiment from this machine: while you hold control your device's actions
    are executed and stored (and learned from); let go and the policy acts again."""
    import threading

    from fleetrl.status_view import StatusError, find_run, read_status
    from fleetrl.teleop.client import TeleopClient, run_teleop

    if address is None or token is None:
        if run is None:
            _fail("--run: needed unless both --address and --token are given")
        try:
            run_dir = find_run(run, run_root)
            actors = {a["id"]: a for a in read_status(run_dir).get("actors", [])}
        except StatusError as exc:
            _fail(str(exc))
        if actor not in actors:
            _fail(f"--actor {actor}: no such actor in {run_dir} (actors: {sorted(actors)})")
        address = address or actors[actor].get("teleop")
        if not address:
            _fail(f"--actor {actor}: it has no teleop endpoint (teleop.enabled is off?)")
        token_file = run_dir / "teleop_token"
        if token is None:
            if not token_file.is_file():
                _fail(f"{token_file}: not found; give --token")
            token = token_file.read_text().strip()
    dev = _open_input_device(device, recording, "--device")
    client = TeleopClient(address, token)
    stop = threading.Event()
    try:
        summary = run_teleop(client, dev, rate_hz=rate_hz, stop=stop, duration_s=duration_s)
    except KeyboardInterrupt:
        stop.set()
        summary = {"commands": None}
    except RuntimeError as exc:
        _fail(str(exc))
    finally:
        client.close()
    print(json.dumps({"actor": actor, "address": address, **summary}))


@app.command("console")
def console_page(
    run: Annotated[str, typer.Option(help=_RUN_HELP)],
    run_root: Annotated[pathlib.Path, typer.Option(help=_RUN_ROOT_HELP)] = pathlib.Path("runs"),
    host: Annotated[str, typer.Option(help="Address to serve on (browsers treat localhost as secure: the Gamepad "
                                     "API works there; elsewhere use an SSH tunnel).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port of the page.")] = 8765,
) -> None:
    """Serve a web page listing the run's actors with their camera and status; take one over with the keyboard or
    a gamepad, label episodes. Log in with the run's teleop token (RUN_DIR/teleop_token)."""
    from fleetrl.status_view import StatusError, find_run
    from fleetrl.teleop.console import serve

    try:
        run_dir = find_run(run, run_root)
    except StatusError as exc:
        _fail(str(exc))
    token_file = run_dir / "teleop_token"
    if not token_file.is_file():
        _fail(f"{token_file}: not found (the run writes it when it starts)")
    console.print(f"fleetrl console for {run_dir.name}: http://{host}:{port}/ (token: {token_file})")
    try:
        serve(run_dir, token_file.read_text().strip(), host, port)
    except KeyboardInterrupt:
        pass
    except OSError as exc:
        _fail(f"--port {port}: {exc}")


def main() -> None:  # pragma: no cover - console entry point alias
    sys.exit(app())


if __name__ == "__main__":  # pragma: no cover
    main()
