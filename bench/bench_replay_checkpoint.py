"""Reverb checkpoint and restore time against table size, for fleetrl's real table and two observation specs.

The table is fleetrl's ``online_table`` (signature from the schema, uniform sampler, FIFO remover, the UTD rate
limiter, here with ``updates_per_step=1e-6`` and ``batch_size=1`` so that it never blocks the filling writer), in an
in-process ``reverb.Server`` with a ``DefaultCheckpointer`` on a temporary directory, filled through
:class:`EpisodeWriter`, as the replay server of a run holds it. Two specs:

- ``state``: the default env's (``transition_spec(EnvConfig())``: InvertedPendulum-v5, obs float32[4], action
  float32[1]); 200-step episodes of random values of the right shapes, as in ``bench_replay.py``.
- ``image64``: the WidowX reach task with a 64x64 camera (``image`` uint8[64,64,3], ``state``, ``joints``,
  ``object``; action float32[7]); 8 real episodes of random actions rendered by the env (``MUJOCO_GL=egl``, set
  here unless already set), reused round-robin. Real frames matter: Reverb compresses chunks, and rendered frames
  compress ~5x where noise does not compress at all. Without a renderer the script falls back to noise frames and
  says so in the JSON (``image_source``).

The table grows through the sizes of the sweep (one table, capacity = the largest size). At each size, ``repeats``
times, in turn:

1. **checkpoint**: wall time of ``client.checkpoint()``; its directory's size on disk is recorded.
2. **baseline read**: ``read()`` of every file of that checkpoint into memory (they were just written, so this is a
   read from the page cache, as the restore's is).
3. **baseline write**: one plain ``write()`` of those same bytes to a new file, closed, not fsynced (Reverb does not
   fsync either; checked with strace). Diagnostics: the same write followed by ``os.fsync``; ``zlib.compress`` of
   those bytes at level 6 (Reverb writes its checkpoint files as ZLIB-compressed TFRecords; the bytes are
   compressed already, so this approximates the compression's share of the checkpoint time).
4. the writer is closed and the server stopped (not timed), then **restore**: constructing a new ``reverb.Server``
   with the same table and checkpointer until a client's ``server_info()`` answers; the restored ``current_size``
   must equal the saved one (asserted). The restored server is the one checkpointed in the next repeat; only the
   newest checkpoint directory is kept.

Plus, once per spec, **empty start**: the same server started on an empty checkpoint directory (the fixed cost in
the restore time). One process; TensorFlow and torch limited to one thread (Reverb's own C++ threads are not).
"""

from __future__ import annotations

import os

os.environ.setdefault("MUJOCO_GL", "egl")

import pathlib  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import zlib  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import reverb  # noqa: E402
import torch  # noqa: E402
from _common import parse_args, print_table, save, summary  # noqa: E402

import fleetrl.envs  # noqa: E402, F401 - registers the WidowX ids
from fleetrl.config import EnvConfig, ReplayConfig  # noqa: E402
from fleetrl.distributed.replay import ONLINE_TABLE, EpisodeWriter, limit_tf_threads, online_table  # noqa: E402
from fleetrl.envs.gym_adapter import make_env, transition_spec  # noqa: E402
from fleetrl.types import TransitionSpec  # noqa: E402

#: Batch size given to ``online_table``; with ``updates_per_step=1e-6`` the limiter's insert side is never reached
#: below ~1M items (nothing samples here), as in ``bench_actor_overhead.py``.
LIMITER_BATCH = 1
STATE_EPISODE_STEPS = 200
IMAGE_ENV = EnvConfig(id="fleetrl/WidowXReach-v0", max_episode_steps=None, kwargs={"image": True, "image_size": 64})
Episode = tuple[list[dict[str, Any]], dict[str, Any]]


def state_episodes(spec: TransitionSpec, n: int = 8, seed: int = 0) -> list[Episode]:
    """``n`` 200-step episodes of schema rows with random values of the default env's shapes."""
    rng = np.random.default_rng(seed)
    out = []
    for e in range(n):
        rows = [spec.make_step({"state": rng.standard_normal(4).astype(np.float32)},
                               rng.uniform(-1, 1, spec.action.shape).astype(np.float32), reward=1.0,
                               terminated=False, truncated=t == STATE_EPISODE_STEPS - 1,
                               mc_return=float(STATE_EPISODE_STEPS - t), is_intervention=False, policy_version=7,
                               actor_id=0, episode_id=e)
                for t in range(STATE_EPISODE_STEPS)]
        out.append((rows, spec.padding_step({"state": rng.standard_normal(4).astype(np.float32)}, 0, e)))
    return out


def image_episodes(spec: TransitionSpec, n: int = 8, seed: int = 0) -> tuple[list[Episode], str]:
    """``n`` episodes of the WidowX image env with random actions (real rendered frames), or noise frames if the
    env cannot render here. Returns the episodes and where the frames came from."""
    rng = np.random.default_rng(seed)
    out: list[Episode] = []
    try:
        env = make_env(IMAGE_ENV)
        env.action_space.seed(seed)
        for e in range(n):
            obs, _ = env.reset(seed=seed + e)
            rows, done = [], False
            while not done:
                action = env.action_space.sample()
                nxt, reward, terminated, truncated, _ = env.step(action)
                done = terminated or truncated
                rows.append(spec.make_step(obs, action, reward=reward, terminated=terminated, truncated=truncated,
                                           mc_return=0.0, is_intervention=False, policy_version=7, actor_id=0,
                                           episode_id=e))
                obs = nxt
            out.append((rows, spec.padding_step(obs, 0, e)))
        env.close()
        return out, f"rendered by {IMAGE_ENV.id} (MUJOCO_GL={os.environ.get('MUJOCO_GL')}), random actions"
    except Exception as exc:  # noqa: BLE001 - no renderer: fall back to noise frames, recorded in the result
        print(f"image env cannot render ({type(exc).__name__}: {exc}); using noise frames")

    def obs() -> dict[str, np.ndarray]:
        return {k: (rng.integers(0, 256, s.shape, dtype=np.uint8) if s.dtype == np.uint8
                    else rng.standard_normal(s.shape).astype(s.dtype)) for k, s in spec.obs.items()}

    steps = 60
    for e in range(n):
        rows = [spec.make_step(obs(), rng.uniform(-1, 1, spec.action.shape), reward=0.0, terminated=False,
                               truncated=t == steps - 1, mc_return=0.0, is_intervention=False, policy_version=7,
                               actor_id=0, episode_id=e) for t in range(steps)]
        out.append((rows, spec.padding_step(obs(), 0, e)))
    return out, "uniform noise (no renderer)"


def dir_bytes(path: pathlib.Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


class Replay:
    """An in-process Reverb server with fleetrl's online table and a checkpointer on ``ckpt_dir``."""

    def __init__(self, spec: TransitionSpec, capacity: int, ckpt_dir: pathlib.Path):
        self.spec, self.cfg, self.ckpt_dir = spec, ReplayConfig(capacity=capacity, min_size=1,
                                                                updates_per_step=1e-6), ckpt_dir
        self.server: reverb.Server | None = None
        self.client: reverb.Client | None = None
        self.writer: EpisodeWriter | None = None

    def start(self) -> float:
        """Start the server (restoring the newest checkpoint in ``ckpt_dir``, if any); seconds until it serves."""
        t0 = time.perf_counter()
        self.server = reverb.Server(tables=[online_table(self.spec, self.cfg, LIMITER_BATCH)],
                                    checkpointer=reverb.checkpointers.DefaultCheckpointer(path=str(self.ckpt_dir)))
        self.client = reverb.Client(f"localhost:{self.server.port}")
        self.client.server_info()
        return time.perf_counter() - t0

    def size(self) -> int:
        return int(self.client.server_info()[ONLINE_TABLE].current_size)

    def fill_to(self, size: int, episodes: list[Episode], next_episode: int) -> int:
        """Write whole episodes until the table holds ``size`` items (the last one cut to fit); returns the
        index of the next episode to write."""
        if self.writer is None:
            self.writer = EpisodeWriter(self.client, self.spec)
        i = next_episode
        while (have := self.size()) < size:
            rows, padding = episodes[i % len(episodes)]
            late = (lambda d: lambda: time.monotonic() > d)(time.monotonic() + 60.0)
            if not (self.writer.write_episode(rows[: size - have], padding, late) and self.writer.flush(late)):
                raise RuntimeError(f"inserts blocked for 60 s at {have} items (rate limiter?)")
            i += 1
        return i

    def stop(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        self.client = None
        self.server.stop()
        self.server = None


def plain_read(files: list[pathlib.Path]) -> tuple[float, bytes]:
    t0 = time.perf_counter()
    parts = []
    for f in files:
        with open(f, "rb", buffering=0) as fh:
            parts.append(fh.read())
    data = b"".join(parts)
    return time.perf_counter() - t0, data


def plain_write(path: pathlib.Path, data: bytes, fsync: bool) -> float:
    t0 = time.perf_counter()
    with open(path, "wb", buffering=0) as fh:
        fh.write(data)
        if fsync:
            os.fsync(fh.fileno())
    dt = time.perf_counter() - t0
    path.unlink()
    return dt


def sweep(name: str, spec: TransitionSpec, episodes: list[Episode], sizes: list[int], repeats: int,
          root: pathlib.Path) -> dict[str, Any]:
    ckpt_dir, scratch = root / name / "ckpt", root / name / "scratch"
    ckpt_dir.mkdir(parents=True)
    scratch.mkdir(parents=True)
    replay = Replay(spec, max(sizes), ckpt_dir)

    empty = []
    for _ in range(repeats + 1):  # the first start is a warm-up (imports, first gRPC server)
        empty.append(replay.start())
        replay.stop()
    empty = empty[1:]
    replay.start()

    out: dict[str, Any] = {"empty_start_s": summary(empty), "sizes": {}}
    next_episode = 0
    for size in sizes:
        t0 = time.perf_counter()
        next_episode = replay.fill_to(size, episodes, next_episode)
        fill_s = time.perf_counter() - t0
        assert replay.size() == size, (replay.size(), size)
        m: dict[str, list[float]] = {k: [] for k in ("checkpoint_s", "restore_s", "read_s", "write_s",
                                                      "write_fsync_s", "zlib_s", "checkpoint_bytes")}
        file_bytes: dict[str, int] = {}
        for _ in range(repeats):
            t0 = time.perf_counter()
            path = pathlib.Path(replay.client.checkpoint())
            m["checkpoint_s"].append(time.perf_counter() - t0)
            files = sorted(f for f in path.iterdir() if f.is_file())
            m["checkpoint_bytes"].append(dir_bytes(path))
            file_bytes = {f.name: f.stat().st_size for f in files}
            read_s, data = plain_read(files)
            m["read_s"].append(read_s)
            m["write_s"].append(plain_write(scratch / "plain.bin", data, fsync=False))
            m["write_fsync_s"].append(plain_write(scratch / "plain.bin", data, fsync=True))
            t0 = time.perf_counter()
            zlib.compress(data, 6)
            m["zlib_s"].append(time.perf_counter() - t0)
            del data
            replay.stop()
            m["restore_s"].append(replay.start())
            restored = replay.size()
            assert restored == size, f"{name}: restored {restored} items, checkpointed {size}"
            for old in ckpt_dir.iterdir():  # the restored server no longer needs it; the next repeat writes anew
                shutil.rmtree(old)
        mb = statistics.median(m["checkpoint_bytes"]) / 1e6
        med = {k: statistics.median(v) for k, v in m.items() if k != "checkpoint_bytes"}
        out["sizes"][size] = {
            "fill_s": fill_s, "checkpoint_mb": mb, "checkpoint_file_bytes": file_bytes,
            "bytes_per_item": mb * 1e6 / size,
            **{k: summary(v) for k, v in m.items() if k != "checkpoint_bytes"},
            "checkpoint_mb_per_s": mb / med["checkpoint_s"], "plain_write_mb_per_s": mb / med["write_s"],
            "restore_mb_per_s": mb / med["restore_s"], "plain_read_mb_per_s": mb / med["read_s"],
            # Paired per repeat: the checkpoint and its baseline ran back to back.
            "checkpoint_over_write_paired": statistics.median(
                c / w for c, w in zip(m["checkpoint_s"], m["write_s"], strict=True)),
            "restore_over_read_paired": statistics.median(
                r / w for r, w in zip(m["restore_s"], m["read_s"], strict=True)),
        }
        print(f"{name} {size:>7,} items: fill {fill_s:.1f} s, checkpoint {med['checkpoint_s']:.3f} s, "
              f"restore {med['restore_s']:.3f} s, {mb:.1f} MB", flush=True)
    replay.stop()
    shutil.rmtree(root / name)
    return out


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    quick = args.quick
    repeats = args.repeats or (3 if quick else 5)
    torch.set_num_threads(1)
    limit_tf_threads(1)
    sizes = {"state": [1_000, 10_000] if quick else [1_000, 10_000, 100_000, 200_000],
             "image64": [1_000] if quick else [1_000, 10_000, 50_000]}

    state_spec = transition_spec(EnvConfig())
    image_spec = transition_spec(IMAGE_ENV)
    images, image_source = image_episodes(image_spec)
    specs = {"state": (state_spec, state_episodes(state_spec)), "image64": (image_spec, images)}

    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench_ckpt_") as tmp:
        for name, (spec, episodes) in specs.items():
            results[name] = sweep(name, spec, episodes, sizes[name], repeats, pathlib.Path(tmp))

    rows, ratios = [], {}
    for name, res in results.items():
        e = res["empty_start_s"]["median"]
        print(f"{name}: empty server start (same table, empty checkpoint dir) {1e3 * e:.0f} ms "
              f"(min-max {1e3 * res['empty_start_s']['min']:.0f}-{1e3 * res['empty_start_s']['max']:.0f})")
        for size, r in res["sizes"].items():
            c, rs = r["checkpoint_s"], r["restore_s"]
            rows.append([name, size, r["checkpoint_mb"], c["median"], f"{c['min']:.3g}-{c['max']:.3g}",
                         r["write_s"]["median"], r["zlib_s"]["median"], r["checkpoint_over_write_paired"], rs["median"],
                         f"{rs['min']:.3g}-{rs['max']:.3g}", r["read_s"]["median"], r["restore_over_read_paired"],
                         r["checkpoint_mb_per_s"]])
            ratios[f"{name} {size}: checkpoint / plain write (paired)"] = r["checkpoint_over_write_paired"]
            ratios[f"{name} {size}: restore / plain read (paired)"] = r["restore_over_read_paired"]
            ratios[f"{name} {size}: restore - empty start (s)"] = rs["median"] - e
    print_table(f"Reverb checkpoint and restore (median of {repeats}; seconds)",
                ["spec", "items", "MB", "ckpt", "min-max", "write", "zlib", "ckpt/write", "restore", "min-max", "read",
                 "restore/read", "ckpt MB/s"], rows)
    save("bench_replay_checkpoint", args,
         params={"sizes": sizes, "repeats": repeats, "table": "online_table(spec, ReplayConfig(capacity=max size, "
                 "min_size=1, updates_per_step=1e-6), batch_size=1)", "state_spec": state_spec.to_dict(),
                 "image_spec": image_spec.to_dict(), "image_env": IMAGE_ENV.id, "image_source": image_source,
                 "state_episode_steps": STATE_EPISODE_STEPS,
                 "image_episode_steps": [len(rows) for rows, _ in images], "tmpdir": tempfile.gettempdir()},
         results=results, ratios=ratios,
         notes=["checkpoint = client.checkpoint() wall time; restore = new reverb.Server with the same table and "
                "checkpointer until server_info() answers",
                "baselines: plain read()/write() of the checkpoint's own bytes in the same repeat, no fsync "
                "(Reverb does not fsync); write_fsync_s adds os.fsync",
                "Reverb writes checkpoints as ZLIB-compressed TFRecord files (chunks are zstd-compressed already)"])


if __name__ == "__main__":
    main()
