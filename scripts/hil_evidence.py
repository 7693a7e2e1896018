"""Human-in-the-loop evidence in simulation: RLPD with interventions against RLPD without, several seeds.

Every run is ``fleetrl train`` with real Ray actors and a real Reverb server (config
``configs/widowx_hil_evidence.yaml``). In the ``interventions`` condition the WidowX task's scripted expert stands
in for the person (``teleop.scripted_share`` of the episodes, ``teleop.scripted_steps`` steps each) and every
learner batch is half from table ``demos`` (HIL-SERL); in ``none`` nobody intervenes and batches are all online.

Measured per run (from ``RUN_DIR/episodes.jsonl``): the success rate of the episodes *nobody intervened in*, per
bin of env steps (what the policy does alone), and the intervention rate; and at the end the deterministic policy
on 20 new episodes (``fleetrl eval``). ``--plot`` writes the figure and the table into ``docs/results/``.

    python scripts/hil_evidence.py --out runs/hil --seeds 0 1 2 [--jobs 2]
    python scripts/hil_evidence.py --out runs/hil --plot docs/results
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import pathlib
import shutil
import time

from calql_evidence import fleetrl  # the same way of running the command line, logged per run

REPO = pathlib.Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "widowx_hil_evidence.yaml"
CONDITIONS = {"interventions": ["teleop.scripted_share=0.5", "demos.ratio=0.5"],
              "none": ["teleop.scripted_share=0.0", "demos.ratio=0.0"]}
MIN_EPISODES_PER_BIN = 5


def one_run(out: pathlib.Path, condition: str, seed: int, extra: list[str]) -> dict:
    root = out / f"{condition}-s{seed}"
    if root.exists():
        shutil.rmtree(root)  # a run cut short by an earlier attempt
    root.mkdir(parents=True)
    log = root / "log.txt"
    t0 = time.monotonic()
    fleetrl("train", "-c", str(CONFIG), f"run_root={root}", "name=online", f"learner.seed={seed}",
            f"actors.seed={seed * 7919}", *CONDITIONS[condition], *extra, log=log)
    (run,) = [p for p in root.iterdir() if p.name.startswith("online-")]
    result = json.loads(fleetrl("eval", "--checkpoint", str(run), "--episodes", "20", "--seed",
                                str(seed * 7919 + 10_000), log=log))
    record = {"condition": condition, "seed": seed, "run_dir": str(run), "final_eval_success": result["success_rate"],
              "seconds": time.monotonic() - t0}
    (root / "record.json").write_text(json.dumps(record))
    return record


def run_all(args: argparse.Namespace) -> None:
    out = pathlib.Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    jobs = [(c, s) for s in args.seeds for c in CONDITIONS if not (out / f"{c}-s{s}" / "record.json").exists()]
    with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
        futures = {pool.submit(one_run, out, c, s, args.set): (c, s) for c, s in jobs}
        for fut in concurrent.futures.as_completed(futures):
            print(futures[fut], fut.result() if fut.exception() is None else fut.exception(), flush=True)


def curves(run_dir: pathlib.Path, bin_steps: int) -> dict[str, list[float]]:
    """Per bin of env steps (the run's cumulative steps when each episode was logged): success of the episodes
    without intervention, and the share of steps a person (the scripted operator) chose."""
    steps, bins = 0, {}
    for line in (run_dir / "episodes.jsonl").read_text().splitlines():
        e = json.loads(line)
        if not e.get("written"):
            continue
        steps += e["length"]
        b = bins.setdefault(steps // bin_steps, {"alone": [], "steps": 0, "intervened": 0})
        b["steps"] += e["length"]
        b["intervened"] += e.get("interventions", 0)
        if not e.get("interventions"):
            b["alone"].append(float(e["success"]))
    xs = sorted(x for x in bins if len(bins[x]["alone"]) >= MIN_EPISODES_PER_BIN)
    return {"env_steps": [(x + 1) * bin_steps for x in xs],
            "success_alone": [sum(bins[x]["alone"]) / len(bins[x]["alone"]) for x in xs],
            "intervention_rate": [bins[x]["intervened"] / bins[x]["steps"] for x in xs]}


def plot(args: argparse.Namespace) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    out, dest = pathlib.Path(args.out), pathlib.Path(args.plot)
    records = [json.loads(p.read_text()) for p in sorted(out.glob("*/record.json"))]
    table, fig = {}, plt.figure(figsize=(7, 4))
    ax = fig.add_subplot(111)
    for condition, color in (("interventions", "tab:green"), ("none", "tab:gray")):
        mine = sorted((r for r in records if r["condition"] == condition), key=lambda r: r["seed"])
        if not mine:
            continue
        per = [curves(pathlib.Path(r["run_dir"]), args.bin) for r in mine]
        common = sorted(set.intersection(*(set(c["env_steps"]) for c in per)))
        ys = np.array([[c["success_alone"][c["env_steps"].index(x)] for x in common] for c in per])
        for y in ys:
            ax.plot(common, y, color=color, alpha=0.3, lw=0.8)
        ax.plot(common, ys.mean(0), color=color, lw=2, label=f"{condition} (mean of {len(mine)} seeds)")
        table[condition] = {
            "seeds": [r["seed"] for r in mine], "final_eval_success": [r["final_eval_success"] for r in mine],
            "first_bin": ys[:, 0].tolist(), "last_bin": ys[:, -1].tolist(), "mean_over_run": ys.mean(1).tolist(),
            "steps_to_half": [next((x for x, v in zip(common, y, strict=True) if v >= 0.5), None) for y in ys],
            "intervention_rate": [float(np.mean(c["intervention_rate"])) for c in per], "bin_env_steps": args.bin}
    ax.set_xlabel("env steps")
    ax.set_ylabel("success rate, episodes without intervention")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("RLPD on WidowX reach: with and without (scripted) interventions", fontsize=9)
    fig.tight_layout()
    dest.mkdir(parents=True, exist_ok=True)
    fig.savefig(dest / f"{args.name}.png", dpi=120)
    (dest / f"{args.name}.json").write_text(json.dumps(table, indent=2) + "\n")
    print(json.dumps(table, indent=2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--set", nargs="*", default=[], help="extra config overrides for every run")
    parser.add_argument("--plot", help="write the figure and the table into this directory instead of running")
    parser.add_argument("--bin", type=int, default=500, help="env steps per point of the success curve")
    parser.add_argument("--name", default="hil_widowx", help="file name stem of the figure and the table")
    args = parser.parse_args()
    plot(args) if args.plot else run_all(args)


if __name__ == "__main__":
    main()
