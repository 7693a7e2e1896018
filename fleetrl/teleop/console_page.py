"""The console's HTML and JavaScript (one page, no build step, no external assets).

Keys are those of the terminal keyboard device (:data:`fleetrl.teleop.keyboard.MOTION_KEYS`), here with real
key-up events: an axis moves while its key is held. A gamepad (browser Gamepad API, standard mapping) drives the
same 7-D Bridge action: left stick x / y, right stick z / yaw, triggers close / open the gripper.
"""

from __future__ import annotations

import json

from fleetrl.teleop.keyboard import MOTION_KEYS

_KEYS = json.dumps({k: [axis, sign] for k, (axis, sign) in MOTION_KEYS.items()})

LOGIN_PAGE = """<!doctype html><html><head><meta charset=utf-8><title>fleetrl console</title>
<style>body{font-family:sans-serif;margin:3em}.err{color:#b00}</style></head><body>
<h1>fleetrl console</h1><!--error-->
<form method=post action=/login><label>Teleop token (RUN_DIR/teleop_token)
<input id=token name=token type=password autofocus></label> <button id=login type=submit>Enter</button></form>
</body></html>"""

PAGE = """<!doctype html><html><head><meta charset=utf-8><title>fleetrl console</title>
<style>
body{font-family:sans-serif;margin:1em} table{border-collapse:collapse}
td,th{padding:2px 8px;border-bottom:1px solid #ddd}
#panel{margin-top:1em;display:none} #camera{width:256px;height:256px;image-rendering:pixelated;background:#222}
button{margin:2px} .on{background:#c33;color:#fff} #status{font-family:monospace}
</style></head><body>
<h1>fleetrl console <small id=run></small></h1>
<table id=actors><thead><tr><th>id</th><th>kind</th><th>name</th><th>health</th><th>steps</th><th>return</th>
<th>success</th><th>policy</th><th>interventions</th><th>controlled</th><th></th></tr></thead><tbody></tbody></table>
<div id=panel>
<h2>actor <span id=sel></span></h2>
<img id=camera alt="no camera"><br>
<button id=takeover>Take over</button>
<button id=success>Success</button><button id=failure>Failure</button><button id=rerecord>Re-record</button>
<p>Keys while in control: w/s x, a/d y, r/f z, u/o roll, i/k pitch, j/l yaw, space gripper. Or a gamepad.</p>
<pre id=status></pre>
</div>
<script>
const KEYS = %KEYS%;
let selected = null, ws = null, controlling = false, gripper = 1.0, actionDim = 7, held = {};
const $ = (id) => document.getElementById(id);
function fmt(v) { return v === null || v === undefined ? "" : (typeof v === "number" ? +v.toFixed(3) : v); }
async function refresh() {
  const r = await fetch("/api/actors");
  if (!r.ok) return;
  const doc = await r.json();
  $("run").textContent = (doc.run || "") + " " + (doc.state || "");
  const body = $("actors").tBodies[0];
  body.innerHTML = "";
  for (const a of doc.actors) {
    const tr = body.insertRow();
    tr.id = "actor-" + a.id;
    for (const k of ["id","kind","name","health","env_steps","episode_return","success_rate","policy_version",
                     "intervention_rate","controlled"]) tr.insertCell().textContent = fmt(a[k]);
    const b = document.createElement("button");
    b.textContent = "View"; b.className = "view"; b.onclick = () => select(a.id);
    tr.insertCell().appendChild(b);
  }
}
function select(id) {
  if (ws) { release(); ws.close(); }
  selected = id; $("sel").textContent = id; $("panel").style.display = "block";
  ws = new WebSocket((location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/ws/" + id);
  ws.onmessage = (e) => {
    const m = JSON.parse(e.data);
    if (m.type === "hello") actionDim = m.action_dim;
    else $("status").textContent = JSON.stringify(m);
  };
}
function release() {
  if (controlling && ws && ws.readyState === 1) ws.send(JSON.stringify({type: "control", takeover: false}));
  controlling = false; $("takeover").classList.remove("on"); $("takeover").textContent = "Take over";
}
$("takeover").onclick = () => {
  if (controlling) { release(); return; }
  controlling = true; $("takeover").classList.add("on"); $("takeover").textContent = "Release";
};
for (const ev of ["success", "failure", "rerecord"])
  $(ev).onclick = () => ws && ws.send(JSON.stringify({type: "event", event: ev}));
document.addEventListener("keydown", (e) => {
  if (e.repeat) return;
  if (e.key === " ") { gripper = -gripper; e.preventDefault(); return; }
  if (KEYS[e.key.toLowerCase()]) held[e.key.toLowerCase()] = true;
});
document.addEventListener("keyup", (e) => { delete held[e.key.toLowerCase()]; });
window.addEventListener("blur", () => { held = {}; release(); });
document.addEventListener("visibilitychange", () => { if (document.hidden) { held = {}; release(); } });
function action() {
  const a = [0, 0, 0, 0, 0, 0, gripper];
  for (const k in held) { const [axis, sign] = KEYS[k]; a[axis] = 0.5 * sign; }
  const pads = navigator.getGamepads ? navigator.getGamepads() : [];
  const pad = pads && pads[0];
  if (pad) {
    const dz = (v) => Math.abs(v) < 0.1 ? 0 : v;
    if (dz(pad.axes[1])) a[0] = dz(pad.axes[1]);
    if (dz(pad.axes[0])) a[1] = dz(pad.axes[0]);
    if (pad.axes.length > 3) {
      if (dz(pad.axes[3])) a[2] = -dz(pad.axes[3]);
      if (dz(pad.axes[2])) a[5] = -dz(pad.axes[2]);
    }
    if (pad.buttons[6] && pad.buttons[6].value > 0.5) gripper = -1.0;
    if (pad.buttons[7] && pad.buttons[7].value > 0.5) gripper = 1.0;
    a[6] = gripper;
  }
  return a.slice(0, actionDim);
}
setInterval(() => {
  if (controlling && ws && ws.readyState === 1)
    ws.send(JSON.stringify({type: "control", takeover: true, action: action()}));
}, 50);
setInterval(() => { if (selected !== null) $("camera").src = "/api/frame/" + selected + "?t=" + Date.now(); }, 250);
setInterval(refresh, 1000);
refresh();
</script></body></html>""".replace("%KEYS%", _KEYS)
