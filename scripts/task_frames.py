"""Render a strip of frames (start ... success) of each WidowX task's scripted expert into docs/images/.

Usage: MUJOCO_GL=egl .venv/bin/python scripts/task_frames.py [--size 192] [--frames 4] [--seed 3]
"""

from __future__ import annotations

import argparse
import pathlib

import imageio.v2 as imageio
import numpy as np

from fleetrl.envs.registry import WIDOWX_IDS
from fleetrl.envs.rollout import make_rollout_env, run_episode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=192)
    parser.add_argument("--frames", type=int, default=4)
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--out", default="docs/images")
    args = parser.parse_args()
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for task, env_id in WIDOWX_IDS.items():
        env, policy = make_rollout_env(env_id, "scripted", 0.0, render_mode="rgb_array", render_size=args.size)
        frames: list[np.ndarray] = []
        try:
            episode = run_episode(env, policy, args.seed,
                                  on_frame=lambda env=env, frames=frames: frames.append(env.render()))
        finally:
            env.close()
        picks = np.linspace(0, len(frames) - 1, args.frames).round().astype(int)
        strip = np.concatenate([frames[i] for i in picks], axis=1)
        path = out / f"widowx_{task}.png"
        imageio.imwrite(path, strip)
        print(f"{path}: steps {episode.length}, success {episode.is_success}, frames {list(picks)}")


if __name__ == "__main__":
    main()
