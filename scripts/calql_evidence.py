"""Offline-to-online evidence on the simulated WidowX suite: Cal-QL vs CQL vs RLPD-style SAC vs OGPO, several seeds.

Every run goes through the command line a user would type, with real Ray actors and real Reverb:

1. ``fleetrl collect`` a mixed-quality dataset from the noisy scripted expert (once).
2. Cal-QL and CQL: ``fleetrl pretrain`` (offline only; the pretrained policy is evaluated), then
   ``fleetrl train --init-from`` (online fine-tuning with the actor fleet, batches 50/50 offline/online).
3. RLPD-style SAC (10 LayerNorm critics, 2-of-10 targets): ``fleetrl train`` from scratch with the same offline data
   mixed 50/50 into every batch.
4. OGPO: ``fleetrl pretrain`` with ``learner.algorithm=flow-bc`` (a flow policy cloned from the same data), then
   ``fleetrl train --init-from`` with ``learner.algorithm=ogpo``, online data only (OGPO's setting).

Success vs env steps comes from each run's ``metrics.jsonl`` (the success rate of the episodes the actors finished
in each logging interval, stochastic policy). ``--plot`` turns the runs into ``docs/results/`` figures and a table.

    python scripts/calql_evidence.py --out runs/evidence --seeds 0 1 2 [--jobs 2]
    python scripts/calql_evidence.py --out runs/evidence --plot docs/results
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import pathlib
import shutil
import subprocess
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "widowx_calql_evidence.yaml"
ALGOS = ("calql", "cql", "rlpd", "ogpo")
#: The pretraining algorithm of each two-phase method.
PRETRAIN = {"calql": "calql", "cql": "cql", "ogpo": "flow-bc"}


def fleetrl(*args: str, log: pathlib.Path) -> str:
    env = dict(os.environ, WANDB_MODE="disabled", MUJOCO_GL=os.environ.get("MUJOCO_GL", "egl"))
    with log.open("a") as fh:
        proc = subprocess.run([sys.executable, "-m", "fleetrl.cli", *args], cwd=REPO, env=env, text=True,
                              stdout=subprocess.PIPE, stderr=fh)
        fh.write(proc.stdout)
    if proc.returncode != 0:
        raise RuntimeError(f"fleetrl {' '.join(args[:1])} failed ({proc.returncode}); see {log}")
    return proc.stdout


def one_run(out: pathlib.Path, dataset: pathlib.Path, algo: str, seed: int, overrides: list[str],
            bc_updates: int | None = None) -> dict:
    """Pretrain (Cal-QL, CQL, flow BC) and fine-tune one seed; returns where everything went and the offline eval.
    ``bc_updates``: flow BC's pretraining updates (OGPO starts from a deliberately weak clone), else the config's."""
    root = out / f"{algo}-s{seed}"
    root.mkdir(parents=True, exist_ok=True)
    log = root / "log.txt"
    common = ["-c", str(CONFIG), f"run_root={root}", f"offline.datasets=[{{path: {dataset}}}]",
              f"learner.seed={seed}", f"actors.seed={seed * 7919}", *overrides]
    record: dict = {"algo": algo, "seed": seed}
    t0 = time.monotonic()
    if algo in PRETRAIN:
        updates = bc_updates if algo == "ogpo" and bc_updates else None
        pretrain_dir = finished_pretrain(root, updates)
        if pretrain_dir is None:
            more = [f"offline.pretrain_updates={updates}"] if updates else []
            summary = json.loads(fleetrl("pretrain", *common, f"learner.algorithm={PRETRAIN[algo]}", "name=pretrain",
                                         *more, log=log))
            pretrain_dir = pathlib.Path(summary["run_dir"])
        summary_file = pretrain_dir / "pretrain_summary.json"
        if summary_file.exists():
            record["offline_eval_success"] = json.loads(summary_file.read_text()).get("eval_success_rate")
        else:  # a pretraining run from before the summary file existed: evaluate it the same way
            result = json.loads(fleetrl("eval", "--checkpoint", str(pretrain_dir), "--episodes", "20", "--seed",
                                        str(seed * 7919 + 10_000), log=log))
            record["offline_eval_success"] = result["success_rate"]
        record["pretrain_dir"] = str(pretrain_dir)
        for stale in root.glob("online-*"):  # an online run cut short by an earlier attempt
            shutil.rmtree(stale)
        # OGPO fine-tunes on online data only; the state statistics come with the cloned policy's weights.
        online = ["offline.datasets=[]", "learner.normalize_obs=false"] if algo == "ogpo" else []
        fleetrl("train", *common, f"learner.algorithm={algo}", "name=online", "--init-from", str(pretrain_dir),
                *online, log=log)
    else:
        for stale in root.glob("online-*"):
            shutil.rmtree(stale)
        fleetrl("train", *common, "learner.algorithm=sac", "name=online", "actors.random_steps=1000",
                "learner.sac.num_critics=10", "learner.sac.critic_subsample=2", "learner.sac.critic_layer_norm=true",
                log=log)
    (online,) = [p for p in root.iterdir() if p.name.startswith("online-")]
    record["online_dir"] = str(online)
    record["seconds"] = time.monotonic() - t0
    (root / "record.json").write_text(json.dumps(record))
    return record


def finished_pretrain(root: pathlib.Path, updates: int | None = None) -> pathlib.Path | None:
    """A pretraining run under ``root`` whose last checkpoint holds every configured (or ``updates``) update."""
    import yaml

    want = updates or yaml.safe_load(CONFIG.read_text())["offline"]["pretrain_updates"]
    for run in sorted(root.glob("pretrain-*")):
        latest = run / "checkpoints" / "latest.json"
        if latest.exists() and json.loads(latest.read_text())["learner_steps"] >= want:
            return run
    return None


def run_all(args: argparse.Namespace) -> None:
    out = pathlib.Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    dataset = out / "dataset.h5"
    if not dataset.exists():
        fleetrl("collect", "--env", args.env, "--episodes", str(args.episodes), "--noise", str(args.noise),
                "--seed", "1000", "--out", str(dataset), log=out / "collect.txt")
    jobs = [(algo, seed) for seed in args.seeds for algo in args.algos
            if not (out / f"{algo}-s{seed}" / "record.json").exists()]
    with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
        futures = {pool.submit(one_run, out, dataset, a, s, [f"env.id={args.env}", *args.set], args.bc_updates):
                   (a, s) for a, s in jobs}
        for fut in concurrent.futures.as_completed(futures):
            print(futures[fut], fut.result() if fut.exception() is None else fut.exception(), flush=True)


MIN_EPISODES_PER_BIN = 5


def curves(record: dict, bin_steps: int) -> tuple[list[int], list[float]]:
    """Success rate of the episodes finished in each ``bin_steps`` window of env steps (windows with fewer than
    ``MIN_EPISODES_PER_BIN`` episodes, such as the run's tail, are left out)."""
    rows = [json.loads(x) for x in (pathlib.Path(record["online_dir"]) / "metrics.jsonl").read_text().splitlines()]
    bins: dict[int, list[float]] = {}
    prev_eps = 0
    for r in rows:
        eps = r.get("episodes", 0)
        if eps > prev_eps and r.get("success_rate") is not None:
            bins.setdefault(int(r["env_steps"]) // bin_steps, []).extend([r["success_rate"]] * (eps - prev_eps))
        prev_eps = eps
    xs = sorted(x for x in bins if len(bins[x]) >= MIN_EPISODES_PER_BIN)
    return [(x + 1) * bin_steps for x in xs], [sum(bins[x]) / len(bins[x]) for x in xs]


def plot(args: argparse.Namespace) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    out, dest = pathlib.Path(args.out), pathlib.Path(args.plot)
    dest.mkdir(parents=True, exist_ok=True)
    records = []
    # (label or None, record file): this --out's runs under their algorithm's name, then each --extra's under its label.
    sources = [(None, path) for path in sorted(out.glob("*/record.json"))]
    for extra in args.extra:
        label, _, where = extra.partition("=")
        sources += [(label, path) for path in sorted(pathlib.Path(where).glob("*/record.json"))]
    for label, path in sources:
        record = json.loads(path.read_text())
        if "final_eval_success" not in record:  # the fine-tuned policy, deterministic, on unseen seeds
            result = json.loads(fleetrl("eval", "--checkpoint", record["online_dir"], "--episodes", "20", "--seed",
                                        str(record["seed"] * 7919 + 20_000), log=path.parent / "log.txt"))
            record["final_eval_success"] = result["success_rate"]
            path.write_text(json.dumps(record))
        if args.stochastic_eval and "final_eval_stochastic" not in record:
            # Sampling as the actors do: for a flow policy cloned from noisy data this differs most from the above.
            for key, run in (("offline_eval_stochastic", record.get("pretrain_dir")),
                             ("final_eval_stochastic", record["online_dir"])):
                if run is not None:
                    result = json.loads(fleetrl("eval", "--checkpoint", run, "--episodes", "20", "--stochastic",
                                                "--seed", str(record["seed"] * 7919 + 20_000),
                                                log=path.parent / "log.txt"))
                    record[key] = result["success_rate"]
            path.write_text(json.dumps(record))
        records.append({**record, "algo": label or record["algo"]})
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    table = []
    # An --extra labelled like an algorithm joins that algorithm's curve instead of being drawn twice.
    labels = list(dict.fromkeys([a for a in ALGOS if any(r["algo"] == a for r in records)]
                                + [x.partition("=")[0] for x in args.extra]))
    colors = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:gray")
    for algo, color in zip(labels, colors, strict=False):
        mine = [r for r in records if r["algo"] == algo]
        if not mine:
            continue
        per_seed = [dict(zip(*curves(r, args.bin), strict=True)) for r in mine]
        xs = sorted(set.intersection(*(set(c) for c in per_seed)))  # bins every seed has
        ys = np.array([[c[x] for x in xs] for c in per_seed])
        ax.plot(xs, ys.mean(0), color=color, label=f"{algo} ({len(mine)} seeds)")
        ax.fill_between(xs, ys.min(0), ys.max(0), color=color, alpha=0.2)
        offline = [r.get("offline_eval_success") for r in mine]
        table.append({"algo": algo, "seeds": sorted(r["seed"] for r in mine),
                      "offline_eval_success": offline if algo != "rlpd" else None,
                      "final_eval_success": [r["final_eval_success"] for r in mine],
                      **({"offline_eval_stochastic": [r.get("offline_eval_stochastic") for r in mine],
                          "final_eval_stochastic": [r.get("final_eval_stochastic") for r in mine]}
                         if args.stochastic_eval else {}),
                      "first_bin": [float(y[0]) for y in ys], "last_bin": [float(y[-1]) for y in ys],
                      "mean_over_run": [float(y.mean()) for y in ys], "bin_env_steps": args.bin,
                      "env_steps": int(xs[-1])})
    ax.set_xlabel("online env steps")
    ax.set_ylabel("success rate (training episodes)")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(f"{args.env.split('/')[-1]}: online fine-tuning (mean, min-max over seeds)", fontsize=10)
    fig.tight_layout()
    fig.savefig(dest / f"{args.name}_online.png", dpi=120)
    (dest / f"{args.name}.json").write_text(json.dumps(table, indent=1))
    print(json.dumps(table, indent=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--env", default="fleetrl/WidowXReach-v0")
    parser.add_argument("--noise", type=float, default=1.4)
    parser.add_argument("--episodes", type=int, default=100)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--algos", nargs="+", default=list(ALGOS), choices=ALGOS)
    parser.add_argument("--set", nargs="*", default=[], help="extra config overrides for every run")
    parser.add_argument("--bc-updates", type=int, default=None,
                        help="flow BC pretraining updates for OGPO (stop early: a weak start); default: the config's")
    parser.add_argument("--plot", help="write figures and the table into this directory instead of running")
    parser.add_argument("--stochastic-eval", action="store_true",
                        help="with --plot: also evaluate the start and final policies sampling as the actors do")
    parser.add_argument("--bin", type=int, default=500, help="env steps per point of the success curve")
    parser.add_argument("--name", default="calql_widowx", help="file name stem of the figure and the table")
    parser.add_argument("--extra", nargs="*", default=[], metavar="LABEL=DIR",
                        help="with --plot: also plot the runs under DIR (another --out), as LABEL")
    args = parser.parse_args()
    plot(args) if args.plot else run_all(args)


if __name__ == "__main__":
    main()
