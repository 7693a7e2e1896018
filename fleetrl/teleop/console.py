"""``fleetrl console``: a web page to watch every actor of a run and take one over from the browser.

The server (aiohttp) runs where the run directory is readable (the head node, or the operator's machine with the
run directory shared). It lists the actors from ``RUN_DIR/status.json``, shows the chosen actor's camera (JPEG of
its newest observation image, fetched from its teleop endpoint), and relays the browser's keyboard / Gamepad API
commands and success / failure / re-record buttons to the actor's teleop endpoint over a WebSocket. Only people
who give the run's teleop token (``RUN_DIR/teleop_token``) get in: it is checked on login and carried in a cookie.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import pathlib
import threading
import time
from typing import Any

from aiohttp import WSMsgType, web

from fleetrl.teleop.client import TeleopClient
from fleetrl.teleop.console_page import LOGIN_PAGE, PAGE

COOKIE = "fleetrl_token"


class Console:
    """The console's state: the run directory, its token, one teleop client per actor for camera frames."""

    def __init__(self, run_dir: pathlib.Path, token: str):
        self.run_dir, self._token = pathlib.Path(run_dir), token
        self._frame_clients: dict[int, TeleopClient] = {}
        self._frame_lock = threading.Lock()

    # ---- helpers -------------------------------------------------------------------------------------------
    def authorised(self, request: web.Request) -> bool:
        given = request.cookies.get(COOKIE) or request.query.get("token") or ""
        return hmac.compare_digest(given, self._token)

    def status(self) -> dict[str, Any]:
        try:
            return json.loads((self.run_dir / "status.json").read_text())
        except (OSError, ValueError):
            return {"state": "starting", "actors": []}

    def endpoint(self, actor_id: int) -> str | None:
        for actor in self.status().get("actors", []):
            if actor.get("id") == actor_id:
                return actor.get("teleop")
        return None

    def frame_jpeg(self, actor_id: int) -> bytes | None:
        import cv2

        address = self.endpoint(actor_id)
        if address is None:
            return None
        with self._frame_lock:
            client = self._frame_clients.get(actor_id)
            if client is None or client.address != address:  # a restarted actor has a new endpoint
                client = self._frame_clients[actor_id] = TeleopClient(address, self._token)
            reply = client.request({"type": "frame"})
        if not reply or "image" not in reply:
            return None
        ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(reply["image"], cv2.COLOR_RGB2BGR))
        return jpeg.tobytes() if ok else None

    # ---- handlers ------------------------------------------------------------------------------------------
    async def index(self, request: web.Request) -> web.Response:
        if not self.authorised(request):
            return web.Response(text=LOGIN_PAGE, content_type="text/html", status=401)
        response = web.Response(text=PAGE, content_type="text/html")
        if request.query.get("token"):  # keep it in a cookie, not in the address bar
            response.set_cookie(COOKIE, request.query["token"], httponly=True, samesite="Strict")
        return response

    async def login(self, request: web.Request) -> web.Response:
        form = await request.post()
        token = str(form.get("token", ""))
        if not hmac.compare_digest(token, self._token):
            return web.Response(text=LOGIN_PAGE.replace("<!--error-->", "<p class=err>wrong token</p>"),
                                content_type="text/html", status=401)
        response = web.HTTPFound("/")
        response.set_cookie(COOKIE, token, httponly=True, samesite="Strict")
        return response

    async def actors(self, request: web.Request) -> web.Response:
        if not self.authorised(request):
            raise web.HTTPUnauthorized(text="teleop token needed")
        doc = self.status()
        keys = ("id", "kind", "name", "health", "env_steps", "episode_return", "success_rate", "policy_version",
                "intervention_rate", "controlled", "teleop")
        return web.json_response({"run": doc.get("run"), "state": doc.get("state"),
                                  "actors": [{k: a.get(k) for k in keys} for a in doc.get("actors", [])]})

    async def frame(self, request: web.Request) -> web.Response:
        if not self.authorised(request):
            raise web.HTTPUnauthorized(text="teleop token needed")
        jpeg = await asyncio.get_running_loop().run_in_executor(None, self.frame_jpeg, int(request.match_info["id"]))
        if jpeg is None:
            raise web.HTTPNotFound(text="no camera frame")
        return web.Response(body=jpeg, content_type="image/jpeg", headers={"Cache-Control": "no-store"})

    async def control(self, request: web.Request) -> web.WebSocketResponse:
        """Relay one browser's commands to one actor; every reply goes back with the latency figures."""
        if not self.authorised(request):
            raise web.HTTPUnauthorized(text="teleop token needed")
        actor_id = int(request.match_info["id"])
        address = self.endpoint(actor_id)
        if address is None:
            raise web.HTTPNotFound(text=f"actor {actor_id}: no teleop endpoint")
        ws = web.WebSocketResponse(heartbeat=5.0)
        await ws.prepare(request)
        client = TeleopClient(address, self._token)
        loop = asyncio.get_running_loop()
        controlling = False
        try:
            first = await loop.run_in_executor(None, client.request, {"type": "status"})
            await ws.send_json({"type": "hello", "action_dim": (first or {}).get("action_dim", 7)})
            async for msg in ws:
                if msg.type != WSMsgType.TEXT:
                    continue
                reply, controlling = await loop.run_in_executor(None, self._relay, client, msg.data, controlling)
                await ws.send_json(reply)
        finally:
            if controlling:  # the browser went away while in control: let go now rather than by timeout
                await loop.run_in_executor(None, client.control, False, None, time.time())
            client.close()
        return ws

    @staticmethod
    def _relay(client: TeleopClient, data: str, controlling: bool) -> tuple[dict[str, Any], bool]:
        try:
            msg = json.loads(data)
            if msg.get("type") == "event":
                reply = client.event(str(msg.get("event")))
            else:
                takeover = bool(msg.get("takeover"))
                # The browser's clock is not ours: the event time is when the command reached this server.
                reply = client.control(takeover, msg.get("action") if takeover else None, time.time())
                controlling = takeover
        except (ValueError, RuntimeError) as exc:
            return {"type": "error", "error": str(exc)}, controlling
        from fleetrl.teleop.client import latency_summary

        return {"type": "ack", "reply": None if reply is None else {k: reply.get(k) for k in (
            "controlling", "applied_seq", "steps")}, **latency_summary(client.latency_s[-50:])}, controlling

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/", self.index)
        app.router.add_post("/login", self.login)
        app.router.add_get("/api/actors", self.actors)
        app.router.add_get("/api/frame/{id}", self.frame)
        app.router.add_get("/ws/{id}", self.control)
        return app


def serve(run_dir: pathlib.Path, token: str, host: str = "127.0.0.1", port: int = 8765,
          ready: threading.Event | None = None, stop: threading.Event | None = None) -> None:
    """Serve the console until ``stop`` (or Ctrl-C); ``ready`` is set once it listens."""

    async def main() -> None:
        runner = web.AppRunner(Console(run_dir, token).app())
        await runner.setup()
        await web.TCPSite(runner, host, port).start()
        if ready is not None:
            ready.set()
        try:
            while stop is None or not stop.is_set():
                await asyncio.sleep(0.2)
        finally:
            await runner.cleanup()

    asyncio.run(main())
