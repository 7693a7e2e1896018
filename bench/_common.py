"""Shared helpers of the benchmark scripts: arguments, side-by-side timing, the printed table, the JSON result.

Every benchmark measures a fleetrl path and a named baseline in the same process and run, interleaved repeat by
repeat (A, B, A, B, ...) so slow drift of a noisy machine hits both alike, and reports medians and their ratio.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

RESULTS_DIR = pathlib.Path(__file__).resolve().parent / "results"
_LOAD_AT_START: list[float] | None = None
_CPU_AT_START: tuple[float, float, float] | None = None


def _cpu_snapshot() -> tuple[float, float, float] | None:
    """(wall s, busy CPU-seconds of the whole machine, CPU-seconds of this process), or None off Linux."""
    try:
        fields = [int(x) for x in pathlib.Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    busy = (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")
    t = os.times()
    return time.monotonic(), busy, t.user + t.system


def others_cpu_cores() -> float | None:
    """Average number of cores busy with processes other than this one since :func:`parse_args`.

    The machine has few cores and is shared; this says how much the run was disturbed. (For a script that starts
    worker processes, e.g. Ray actors, their CPU counts as "other".)
    """
    end = _cpu_snapshot()
    if end is None or _CPU_AT_START is None:
        return None
    wall = end[0] - _CPU_AT_START[0]
    return round(((end[1] - _CPU_AT_START[1]) - (end[2] - _CPU_AT_START[2])) / max(wall, 1e-9), 2)


def loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def parse_args(description: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="small sizes; finishes in under a minute")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats per variant (>= 3)")
    args = parser.parse_args()
    global _LOAD_AT_START, _CPU_AT_START
    _LOAD_AT_START, _CPU_AT_START = loadavg(), _cpu_snapshot()
    if args.repeats is not None and args.repeats < 3:
        parser.error("--repeats must be >= 3")
    return args


def versions() -> dict[str, str]:
    """Installed versions of the stack the figures depend on."""
    from importlib import metadata

    out = {"python": platform.python_version()}
    for dist in ("torch", "dm-reverb", "tensorflow-cpu", "ray", "gymnasium", "mujoco", "numpy"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return out


def machine() -> dict[str, Any]:
    mem_gb = None
    try:
        mem_gb = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        pass
    return {"cpus": os.cpu_count(), "memory_gb": mem_gb, "platform": platform.platform(),
            "processor": platform.processor() or platform.machine()}


def interleaved(variants: dict[str, Callable[[], float]], repeats: int) -> dict[str, list[float]]:
    """Run each variant once per repeat, in turn; each call returns one measured rate (or latency)."""
    values: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, fn in variants.items():
            values[name].append(fn())
    return values


def timed_rate(work: Callable[[], int]) -> float:
    """Items per second of one call of ``work`` (which returns the number of items it processed)."""
    t0 = time.perf_counter()
    n = work()
    return n / (time.perf_counter() - t0)


def summary(values: Sequence[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile, ``q`` in [0, 100]."""
    xs = sorted(values)
    if len(xs) == 1:
        return xs[0]
    pos = (len(xs) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def print_table(title: str, headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    def fmt(v: Any) -> str:
        if isinstance(v, float):
            if v != 0 and (abs(v) >= 1000 or abs(v) < 0.01):
                return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.2e}"
            return f"{v:.3g}" if abs(v) < 10 else f"{v:.1f}"
        return str(v)

    cells = [[fmt(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    print(f"\n{title}")
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for r in cells:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)))


def save(name: str, args: argparse.Namespace, params: dict[str, Any], results: dict[str, Any],
         ratios: dict[str, Any], notes: Sequence[str] = ()) -> pathlib.Path:
    """Write ``bench/results/NAME.json`` and return its path."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    doc = {
        "benchmark": name,
        "time_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([".venv/bin/python", f"bench/{name}.py", *sys.argv[1:]]),
        "quick": bool(args.quick),
        "machine": machine(),
        # Other processes share this machine's cores; the 1/5/15-minute load averages tell how busy it was.
        "loadavg_start_end": [_LOAD_AT_START, loadavg()],
        "other_processes_cpu_cores": others_cpu_cores(),
        "versions": versions(),
        "params": params,
        "results": results,
        "ratios": ratios,
        "notes": list(notes),
    }
    path.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"\nother processes used {doc['other_processes_cpu_cores']} cores on average during the run; "
          f"load average at start/end {doc['loadavg_start_end']}")
    print(f"wrote {path.relative_to(path.parents[2])}")
    return path


#: Gains of a linear controller ``a = tanh(K . state)`` that balances InvertedPendulum-v5 for the whole 200-step
#: episode (state = cart position, pole angle, cart velocity, pole angular velocity).
BALANCE_GAINS = (1.0, 10.0, 1.0, 1.0)


def balancing_policy(spec: Any, hidden_dims: Sequence[int] = (256, 256)) -> Any:
    """A :class:`GaussianPolicy` of the usual size whose weights are set so that it balances the default env.

    A freshly initialised policy drops the pendulum within ~6 steps, so its episodes are all reset and episode-end
    work; a trained policy runs the full 200 steps. Here the first two hidden units carry ``+K.x`` and ``-K.x``
    through the ReLUs, the output mean is their difference (= ``K.x``), ``log_std`` is -5, and every other weight
    keeps its random initial value, so each ``act`` costs exactly what a trained policy's does.
    """
    import torch

    from fleetrl.learners.policy import GaussianPolicy

    policy = GaussianPolicy(spec, hidden_dims, seed=0)
    sd = {k: v.clone() for k, v in policy.actor.state_dict().items()}
    keys = [k for k in sd if k.endswith(".weight")]
    first, *middle, last = keys
    k = torch.tensor(BALANCE_GAINS, dtype=torch.float32)
    sd[first][0], sd[first][1] = k, -k
    sd[first.replace("weight", "bias")][:2] = 0.0
    for w in middle:
        sd[w][:2] = 0.0
        sd[w][0, 0] = sd[w][1, 1] = 1.0
        sd[w.replace("weight", "bias")][:2] = 0.0
    sd[last].zero_()
    sd[last][0, 0], sd[last][0, 1] = 1.0, -1.0
    bias = sd[last.replace("weight", "bias")]
    bias.zero_()
    bias[1] = -5.0
    policy.load_weights({name: t.numpy() for name, t in sd.items()})
    return policy
