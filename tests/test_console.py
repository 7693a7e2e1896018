"""`fleetrl console` in a real headless Chromium (Playwright) against a real run: log in with the run's token, see
the actor and its camera, take it over with the keyboard and then a gamepad (the Gamepad API, stood in for by the
page's own navigator), label the episode, let go; what reached replay is the person's action, marked."""

from __future__ import annotations

import json
import pathlib
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
import ray
import reverb

from fleetrl.config import load_config
from fleetrl.distributed.replay import ONLINE_TABLE, BatchSource
from fleetrl.envs.gym_adapter import transition_spec
from fleetrl.runs import new_run
from fleetrl.testing import TrainingThread, free_port, wait_for

playwright = pytest.importorskip("playwright.sync_api", reason="playwright is a dev dependency (make setup)")
CHROMIUM = pathlib.Path("/usr/bin/chromium")
pytestmark = [pytest.mark.usefixtures("one_torch_thread"),
              pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium (make setup installs it)")]
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]


def test_a_person_takes_over_an_actor_from_the_browser(tmp_path):
    from fleetrl.teleop.console import serve

    cfg = load_config(None, [
        f"run_root={tmp_path}", "name=console", "total_env_steps=10000000",
        "env.id=fleetrl/WidowXReach-v0", "env.success=info", "env.max_episode_steps=40",
        "env.kwargs={privileged: false, image: true, image_size: 32, terminate_on_success: false}",
        "actors.num_sim=1", "actors.random_steps=0", "actors.max_steps_per_s=20",
        "replay.min_size=64", "replay.updates_per_step=0.02", "replay.rate_tolerance_steps=1000000",
        "learner.batch_size=32", "learner.sac.hidden_dims=[32, 32]", "learner.encoder.channels=[8, 8]",
        "learner.encoder.groups=4", "learner.encoder.out_dim=32",
        "logging.interval_s=0.5", "logging.live=false", "logging.wandb=false"])
    spec = transition_spec(cfg.env)
    plan = new_run(cfg)
    console_stop, console_ready = threading.Event(), threading.Event()
    with TrainingThread(plan) as training:
        try:
            actor = training.fleet.actors[0].handle
            stats = lambda: ray.get(actor.stats.remote(drain=False), timeout=60)  # noqa: E731
            status = lambda: json.loads((plan.run_dir / "status.json").read_text())  # noqa: E731
            wait_for(lambda: (plan.run_dir / "status.json").exists() and status()["actors"][0].get("teleop"), 120,
                     "the actor's teleop endpoint in status.json")
            token = (plan.run_dir / "teleop_token").read_text().strip()
            port = free_port()
            threading.Thread(target=serve, args=(plan.run_dir, token, "127.0.0.1", port, console_ready, console_stop),
                             daemon=True).start()
            assert console_ready.wait(30)
            url = f"http://127.0.0.1:{port}"
            with pytest.raises(urllib.error.HTTPError) as refused:  # no token: nothing
                urllib.request.urlopen(f"{url}/api/actors", timeout=10)
            assert refused.value.code == 401

            with playwright.sync_playwright() as pw:
                browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
                page = browser.new_page()
                assert page.goto(f"{url}/?token=wrong").status == 401  # the login page
                page.fill("#token", token)
                page.click("#login")
                page.wait_for_selector("#actor-0 .view", timeout=30_000)
                page.click("#actor-0 .view")
                page.wait_for_function("document.getElementById('camera').naturalWidth > 0", timeout=30_000)
                # Keyboard: hold "a" (your left: -y at half speed) for a while, in control.
                page.click("#takeover")
                wait_for(lambda: stats()["controlled"], 20, "the browser in control")
                page.keyboard.down("a")
                time.sleep(1.5)
                page.keyboard.up("a")
                # A gamepad: the left stick pushed away from you (axis 1 = +0.8 -> +x 0.8 under the page's mapping).
                page.evaluate("navigator.getGamepads = () => [{axes: [0, 0.8, 0, 0], buttons: []}]")
                time.sleep(1.5)
                page.evaluate("navigator.getGamepads = () => []")
                page.click("#success")
                page.click("#takeover")  # release
                wait_for(lambda: not stats()["controlled"], 20, "control back to the policy")
                released_at = stats()["env_steps"]
                browser.close()
            assert stats()["teleop_labels"] == ["success"]
            wait_for(lambda: any(a.get("interventions") for a in status()["actors"]), 30, "interventions in status")
            # An episode is written to replay when it ends (its mc_return needs the whole episode): wait for the one
            # the release happened in, or the gamepad's steps may still be in the actor (CI, 2026-11-22).
            wait_for(lambda: stats()["steps_written"] >= released_at, 60, "the released episode in replay")
            # Replay: the intervened transitions carry exactly the browser's actions (gripper open, as the page starts).
            address = ray.get(training.fleet.replay.endpoint.remote())["address"]
            size = reverb.Client(address).server_info()[ONLINE_TABLE].current_size
            source = BatchSource(address, spec, batch_size=max(size * 4, 64))
            batch = source.next(timeout_s=60)
            source.close()
            marked = batch.is_intervention.numpy()
            actions = np.round(batch.action.numpy()[marked], 3)
            keyboard = [0, -0.5, 0, 0, 0, 0, 1]
            gamepad = [0.8, 0, 0, 0, 0, 0, 1]
            idle = [0, 0, 0, 0, 0, 0, 1]  # in control with no key held
            kinds = {tuple(a) for a in actions}
            assert tuple(np.float32(keyboard)) in kinds and tuple(np.float32(gamepad)) in kinds, kinds
            assert kinds <= {tuple(np.float32(k)) for k in (keyboard, gamepad, idle)}, kinds
            assert (~marked).any()  # the policy's steps are there too, unmarked
        finally:
            console_stop.set()
    assert training.error is None, training.error
