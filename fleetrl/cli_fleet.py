"""``fleetrl`` commands for robots and people on a running experiment: robot-server, attach, detach, label,
teleop, console. :func:`register` mounts them on the main app (kept apart from :mod:`fleetrl.cli` for size)."""

from __future__ import annotations

import json
import logging
import pathlib
from typing import Annotated

import typer

from fleetrl.cli_common import console, fail


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
        fail(str(exc))


def open_input_device(name: str, recording: pathlib.Path | None, option: str) -> object:
    """A person's input device by name, or ``recorded`` (replaying ``recording``); fails naming ``option``."""
    try:
        if name == "recorded":
            from fleetrl.teleop.client import RecordedDevice

            if recording is None:
                fail(f"{option} recorded needs --recording FILE")
            return RecordedDevice.from_file(recording)
        from fleetrl.teleop.devices import DeviceUnavailable, open_device

        try:
            return open_device(name)
        except DeviceUnavailable as exc:
            fail(str(exc))
    except (OSError, ValueError) as exc:
        fail(str(exc))


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
            fail(f"--run {run}: the run in {run_dir} is not running (state {state!r})")
        answer = wait_answer(run_dir, submit(run_dir, op, args), wait_s)
    except (StatusError, ControlError) as exc:
        fail(str(exc))
    if not answer.get("ok"):
        fail(str(answer.get("error")))
    return answer


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
        fail(str(exc))
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
            fail(f"robot {robot} left the run: {gave_up[-1].get('what')}")
        time.sleep(0.5)
    fail(f"robot {robot} (actor {actor_id}) joined but has not stepped within {wait_s:.0f} s; see `fleetrl status "
          f"--run {run}` (its server unreachable? its resource on no node?)")


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


def label(
    robot: Annotated[str, typer.Option(help="Name of the robot whose episode is labelled.")],
    outcome: Annotated[str, typer.Argument(help="success or failure.")],
    run: Annotated[str, typer.Option(help=_RUN_HELP)],
    run_root: Annotated[pathlib.Path, typer.Option(help=_RUN_ROOT_HELP)] = pathlib.Path("runs"),
) -> None:
    """A person's verdict on a robot's episode in progress; it overrides the reward classifier and ends the
    episode (success: reward 1, terminal; failure: reward 0, truncated)."""
    if outcome not in ("success", "failure"):
        fail(f"OUTCOME: expected success or failure, got {outcome!r}")
    _send(run, run_root, "label", {"robot": robot, "outcome": outcome}, 30.0)
    print(json.dumps({"robot": robot, "outcome": outcome}))


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
            fail("--run: needed unless both --address and --token are given")
        try:
            run_dir = find_run(run, run_root)
            actors = {a["id"]: a for a in read_status(run_dir).get("actors", [])}
        except StatusError as exc:
            fail(str(exc))
        if actor not in actors:
            fail(f"--actor {actor}: no such actor in {run_dir} (actors: {sorted(actors)})")
        address = address or actors[actor].get("teleop")
        if not address:
            fail(f"--actor {actor}: it has no teleop endpoint (teleop.enabled is off?)")
        token_file = run_dir / "teleop_token"
        if token is None:
            if not token_file.is_file():
                fail(f"{token_file}: not found; give --token")
            token = token_file.read_text().strip()
    dev = open_input_device(device, recording, "--device")
    client = TeleopClient(address, token)
    stop = threading.Event()
    try:
        summary = run_teleop(client, dev, rate_hz=rate_hz, stop=stop, duration_s=duration_s)
    except KeyboardInterrupt:
        stop.set()
        summary = {"commands": None}
    except RuntimeError as exc:
        fail(str(exc))
    finally:
        client.close()
    print(json.dumps({"actor": actor, "address": address, **summary}))


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
        fail(str(exc))
    token_file = run_dir / "teleop_token"
    if not token_file.is_file():
        fail(f"{token_file}: not found (the run writes it when it starts)")
    console.print(f"fleetrl console for {run_dir.name}: http://{host}:{port}/ (token: {token_file})")
    try:
        serve(run_dir, token_file.read_text().strip(), host, port)
    except KeyboardInterrupt:
        pass
    except OSError as exc:
        fail(f"--port {port}: {exc}")


def register(app: typer.Typer) -> None:
    """Mount this module's commands on ``app``."""
    app.command("robot-server")(robot_server)
    for command in (attach, detach, label, teleop):
        app.command()(command)
    app.command("console")(console_page)
