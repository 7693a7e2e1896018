"""Episode dataset files: round trip, all-or-nothing writes (incl. a real EFBIG failure), bad paths, corrupt files."""

from __future__ import annotations

import errno
import gc
import hashlib
import os
import pathlib
import shutil
import subprocess
import sys
import textwrap

import h5py
import numpy as np
import pytest

from fleetrl.datasets import (
    FORMAT,
    DatasetError,
    Episode,
    EpisodeFileWriter,
    dataset_info,
    load_episodes,
    read_episodes,
)

ROOT_ATTRS = {"env_id": "WidowXPush-v0", "policy": "scripted", "noise": 0.1}


def make_episode(length: int, seed: int, image: tuple[int, int] = (16, 16), success_at: int | None = None,
                 truncate: bool = False) -> Episode:
    rng = np.random.default_rng(seed)
    flags = np.zeros(length, bool)
    success = np.zeros(length, bool)
    if success_at is not None:
        success[success_at:] = True
    end = flags.copy()
    end[-1] = True
    return Episode(
        observations={
            "state": rng.normal(size=(length + 1, 7)).astype(np.float32),
            "joints": rng.normal(size=(length + 1, 6)).astype(np.float32),
            "image": rng.integers(0, 256, size=(length + 1, *image, 3), dtype=np.uint8),
        },
        actions=rng.uniform(-1, 1, size=(length, 4)).astype(np.float32),
        rewards=rng.normal(size=length).astype(np.float32),
        terminated=flags if truncate else end,
        truncated=end if truncate else flags,
        success=success,
        attrs={"seed": seed, "scripted": True, "tag": f"ep{seed}"},
    )


def write(path: pathlib.Path, episodes: list[Episode], overwrite: bool = False) -> None:
    with EpisodeFileWriter(path, ROOT_ATTRS, overwrite=overwrite) as writer:
        for episode in episodes:
            writer.add(episode)


def sha256(path: pathlib.Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def assert_same(a: Episode, b: Episode) -> None:
    assert a.observations.keys() == b.observations.keys()
    for key in a.observations:
        assert a.observations[key].dtype == b.observations[key].dtype
        np.testing.assert_array_equal(a.observations[key], b.observations[key])
    for key in ("actions", "rewards", "terminated", "truncated", "success"):
        x, y = getattr(a, key), getattr(b, key)
        assert x.dtype == y.dtype, key
        np.testing.assert_array_equal(x, y)
    assert a.attrs == b.attrs
    assert all(type(a.attrs[k]) is type(b.attrs[k]) for k in a.attrs)


@pytest.fixture
def episodes() -> list[Episode]:
    return [make_episode(5, 0, success_at=3), make_episode(8, 1, truncate=True), make_episode(3, 2)]


@pytest.fixture
def good_file(tmp_path: pathlib.Path, episodes: list[Episode]) -> pathlib.Path:
    path = tmp_path / "good.h5"
    write(path, episodes)
    return path


def test_round_trip(good_file: pathlib.Path, episodes: list[Episode]) -> None:
    assert os.listdir(good_file.parent) == ["good.h5"]  # no temp file left behind
    back = load_episodes(good_file)
    assert len(back) == 3
    for a, b in zip(episodes, back, strict=True):  # order preserved
        assert_same(a, b)
    assert [e.length for e in back] == [5, 8, 3]
    assert [e.is_success for e in back] == [True, False, False]
    assert back[0].return_ == pytest.approx(float(episodes[0].rewards.sum()))
    lazy = read_episodes(good_file)
    assert_same(next(lazy), episodes[0])

    info = dataset_info(good_file)
    assert info["format"] == FORMAT and info["format_version"] == 1
    assert {k: info[k] for k in ROOT_ATTRS} == ROOT_ATTRS
    assert info["num_episodes"] == 3 and info["total_steps"] == 16
    assert info["success_rate"] == pytest.approx(1 / 3)
    assert info["obs_spec"]["image"] == {"shape": [16, 16, 3], "dtype": "uint8"}
    assert info["action_spec"] == {"shape": [4], "dtype": "float32"}

    with h5py.File(good_file, "r") as f:  # the documented layout
        assert list(f["episodes"]) == ["000000", "000001", "000002"]
        group = f["episodes/000001"]
        assert group.attrs["length"] == 8 and not group.attrs["is_success"] and group.attrs["seed"] == 1
        image = group["observations/image"]
        assert image.compression == "gzip" and image.chunks == (1, 16, 16, 3)
        assert group["observations/state"].compression is None and group["observations/state"].chunks is None


def test_existing_file_needs_overwrite(good_file: pathlib.Path) -> None:
    before = sha256(good_file)
    with pytest.raises(DatasetError, match="exists.*overwrite") as err:
        EpisodeFileWriter(good_file, ROOT_ATTRS)
    assert str(good_file) in str(err.value)
    assert sha256(good_file) == before
    assert os.listdir(good_file.parent) == ["good.h5"]


def test_overwrite_replaces(good_file: pathlib.Path) -> None:
    new = [make_episode(4, 10)]
    write(good_file, new, overwrite=True)
    back = load_episodes(good_file)
    assert len(back) == 1
    assert_same(back[0], new[0])
    assert os.listdir(good_file.parent) == ["good.h5"]


@pytest.mark.parametrize("exc_type", [RuntimeError, KeyboardInterrupt])
def test_exception_in_with_block_writes_nothing(tmp_path: pathlib.Path, good_file: pathlib.Path,
                                                episodes: list[Episode], exc_type: type[BaseException]) -> None:
    new_path = tmp_path / "new.h5"
    for path, overwrite in ((new_path, False), (good_file, True)):
        before = sha256(good_file)
        with pytest.raises(exc_type), EpisodeFileWriter(path, ROOT_ATTRS, overwrite=overwrite) as writer:
            writer.add(episodes[0])
            writer.add(episodes[1])
            assert any(name.startswith(f".{path.name}.tmp-") for name in os.listdir(tmp_path))
            raise exc_type("collector crashed")
        assert not new_path.exists()
        assert sha256(good_file) == before
        assert os.listdir(tmp_path) == ["good.h5"]


def test_mismatched_episode_aborts(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "new.h5"
    with pytest.raises(DatasetError, match=r"episode 1.*observations/image") as err:
        with EpisodeFileWriter(path, ROOT_ATTRS) as writer:
            writer.add(make_episode(4, 0))
            writer.add(make_episode(4, 1, image=(8, 8)))
    assert str(path) in str(err.value)
    assert os.listdir(tmp_path) == []


def test_empty_writer_writes_nothing(tmp_path: pathlib.Path) -> None:
    with pytest.raises(DatasetError, match="no episodes"), EpisodeFileWriter(tmp_path / "x.h5", ROOT_ATTRS):
        pass
    assert os.listdir(tmp_path) == []


def test_real_write_failure_keeps_existing_file(good_file: pathlib.Path) -> None:
    before = sha256(good_file)
    # RLIMIT_FSIZE makes write(2) fail with EFBIG past 256 KiB, as a full disk would fail it with ENOSPC; with
    # SIGXFSZ ignored the process gets the error instead of being killed.
    child = textwrap.dedent(f"""
        import resource, signal, sys
        sys.path.insert(0, {str(pathlib.Path(__file__).parent)!r})
        from test_datasets import ROOT_ATTRS, make_episode
        from fleetrl.datasets import DatasetError, EpisodeFileWriter
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (256 * 1024, 256 * 1024))
        try:
            with EpisodeFileWriter(sys.argv[1], ROOT_ATTRS, overwrite=True) as writer:
                for i in range(40):  # 31 KiB of incompressible image per episode, 1.2 MiB in all
                    writer.add(make_episode(40, i, image=(16, 16)))
        except (DatasetError, OSError) as exc:
            print("FAILED", type(exc).__name__, exc)
            sys.exit(3)
        print("WROTE")
    """)
    result = subprocess.run([sys.executable, "-c", child, str(good_file)], capture_output=True, text=True,
                            timeout=60, cwd=good_file.parent)
    assert result.returncode == 3, result.stdout + result.stderr
    assert "FAILED DatasetError" in result.stdout and str(good_file) in result.stdout
    assert "File too large" in result.stdout  # EFBIG from the limit, not some other failure
    assert sha256(good_file) == before
    assert len(load_episodes(good_file)) == 3
    assert os.listdir(good_file.parent) == ["good.h5"]


@pytest.mark.parametrize("failure", [OSError(errno.ENOSPC, "No space left on device"), KeyboardInterrupt()])
def test_write_failure_inside_hdf5_keeps_existing_file(good_file: pathlib.Path, episodes: list[Episode],
                                                       monkeypatch: pytest.MonkeyPatch,
                                                       failure: BaseException) -> None:
    """A failure inside HDF5's write callback (disk full, Ctrl-C) surfaces after the episode; nothing is kept."""
    before = sha256(good_file)
    real_pwrite = os.pwrite
    calls = 0

    def pwrite(fd: int, data: bytes, offset: int) -> int:
        nonlocal calls
        calls += 1
        if calls > 20:
            raise failure
        return real_pwrite(fd, data, offset)

    writer = EpisodeFileWriter(good_file, ROOT_ATTRS, overwrite=True)
    monkeypatch.setattr(os, "pwrite", pwrite)
    expected = DatasetError if isinstance(failure, Exception) else KeyboardInterrupt
    with pytest.raises(expected) as err, writer:
        for episode in episodes * 5:
            writer.add(episode)
    if expected is DatasetError:
        assert "No space left on device" in str(err.value) and str(good_file) in str(err.value)
    monkeypatch.undo()
    assert sha256(good_file) == before
    assert os.listdir(good_file.parent) == ["good.h5"]


def test_abandoned_writer_removes_temp_file(tmp_path: pathlib.Path, episodes: list[Episode]) -> None:
    writer = EpisodeFileWriter(tmp_path / "x.h5", ROOT_ATTRS)
    writer.add(episodes[0])
    assert len(os.listdir(tmp_path)) == 1
    del writer
    gc.collect()
    assert os.listdir(tmp_path) == []


def test_writer_attrs_and_state_checked(tmp_path: pathlib.Path, episodes: list[Episode]) -> None:
    with pytest.raises(DatasetError, match="'num_episodes' is reserved"):
        EpisodeFileWriter(tmp_path / "x.h5", {"num_episodes": 3})
    with pytest.raises(DatasetError, match="'config' must be a str, bool, int or float"):
        EpisodeFileWriter(tmp_path / "x.h5", {"config": {"a": 1}})
    writer = EpisodeFileWriter(tmp_path / "x.h5", ROOT_ATTRS)
    writer.add(episodes[0])
    writer.close()
    with pytest.raises(DatasetError, match="already closed"):
        writer.add(episodes[1])
    assert dataset_info(tmp_path / "x.h5")["num_episodes"] == 1


def test_bad_paths(tmp_path: pathlib.Path) -> None:
    a_file = tmp_path / "plain"
    a_file.write_text("x")
    (tmp_path / "adir").mkdir()
    cases = {tmp_path / "missing" / "x.h5": "does not exist", a_file / "x.h5": "not a directory",
             tmp_path / "adir": "is a directory"}
    for path, message in cases.items():
        with pytest.raises(DatasetError, match=message) as err:
            EpisodeFileWriter(path, ROOT_ATTRS, overwrite=True)
        assert str(path) in str(err.value)
    assert sorted(os.listdir(tmp_path)) == ["adir", "plain"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_unwritable_directory(tmp_path: pathlib.Path) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(DatasetError, match="Permission denied"):
            EpisodeFileWriter(ro / "x.h5", ROOT_ATTRS)
    finally:
        ro.chmod(0o700)


def corrupt_copy(good_file: pathlib.Path, name: str) -> pathlib.Path:
    path = good_file.parent / name
    shutil.copy(good_file, path)
    return path


def assert_unreadable(path: pathlib.Path, *fragments: str, header_ok: bool = False) -> None:
    """Every reader entry point raises DatasetError naming the file and the fragments.

    With ``header_ok`` the damage is inside episode arrays: dataset_info (which reads no arrays) still works."""
    readers = [load_episodes, lambda p: list(read_episodes(p))]
    if header_ok:
        assert dataset_info(path)["num_episodes"] == 3
    else:
        readers.append(dataset_info)
    for read in readers:
        with pytest.raises(DatasetError) as err:
            read(path)
        for fragment in (str(path), *fragments):
            assert fragment in str(err.value), (fragment, str(err.value))


def test_missing_file(tmp_path: pathlib.Path) -> None:
    assert_unreadable(tmp_path / "nope.h5", "no such file")
    with pytest.raises(DatasetError, match="no such file"):
        read_episodes(tmp_path / "nope.h5")  # at the call, not at the first next()


def test_truncated_file(good_file: pathlib.Path) -> None:
    path = good_file.parent / "half.h5"
    data = good_file.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    assert_unreadable(path, "not a readable HDF5 file")


def test_random_bytes(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "noise.h5"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    assert_unreadable(path, "not a readable HDF5 file")


def test_foreign_hdf5_and_wrong_version(good_file: pathlib.Path) -> None:
    other = good_file.parent / "other.h5"
    with h5py.File(other, "w") as f:
        f["data"] = np.arange(3)
    assert_unreadable(other, "not a fleetrl episode dataset")
    newer = corrupt_copy(good_file, "newer.h5")
    with h5py.File(newer, "a") as f:
        f.attrs["format_version"] = 2
    assert_unreadable(newer, "format_version 2 is not supported")


def test_episode_missing_key(good_file: pathlib.Path) -> None:
    path = corrupt_copy(good_file, "nokey.h5")
    with h5py.File(path, "a") as f:
        del f["episodes/000001/rewards"]
    lazy = read_episodes(path)
    next(lazy)  # episode 0 is intact and still readable
    with pytest.raises(DatasetError, match=r"episode 000001: key 'rewards' is missing"):
        next(lazy)
    assert_unreadable(path, "episode 000001", "rewards", header_ok=True)


def test_episode_wrong_shape_and_nan(good_file: pathlib.Path) -> None:
    short = corrupt_copy(good_file, "short.h5")
    with h5py.File(short, "a") as f:
        del f["episodes/000002/rewards"]
        f["episodes/000002/rewards"] = np.zeros(2, np.float32)  # actions has 3 steps
    assert_unreadable(short, "episode 000002", "rewards", header_ok=True)
    nan = corrupt_copy(good_file, "nan.h5")
    with h5py.File(nan, "a") as f:
        f["episodes/000000/rewards"][2] = np.nan
    assert_unreadable(nan, "episode 000000", "rewards", "not finite", header_ok=True)
    missing = corrupt_copy(good_file, "missing-episode.h5")
    with h5py.File(missing, "a") as f:
        del f["episodes/000001"]
    assert_unreadable(missing, "num_episodes")


def test_episode_validation_names_the_key() -> None:
    good = make_episode(4, 0)
    fields = {k: getattr(good, k) for k in ("observations", "actions", "rewards", "terminated", "truncated",
                                             "success", "attrs")}
    mid = np.array([False, True, False, True])
    bad_action = good.actions.copy()
    bad_action[1, 2] = np.nan
    cases = [
        ({"rewards": good.rewards[:3]}, "rewards"),
        ({"observations": {**good.observations, "state": good.observations["state"][:4]}}, "observations/state"),
        ({"terminated": mid}, "terminated"),
        ({"terminated": np.zeros(4, bool)}, "last step ends neither"),
        ({"actions": bad_action}, r"actions is not finite at index \(1, 2\)"),
        ({"rewards": good.rewards.astype(np.float64)}, "rewards has dtype float64"),
        ({"actions": good.actions[:0]}, "at least one step"),
        ({"attrs": {"length": 3}}, "reserved"),
        ({"attrs": {"seed": [1, 2]}}, "attr 'seed'"),
    ]
    for change, message in cases:
        with pytest.raises(DatasetError, match=message):
            Episode(**{**fields, **change})
