"""On-disk episode datasets (HDF5): the format ``fleetrl collect`` writes and offline-RL loaders read.

One file holds many episodes. :class:`EpisodeFileWriter` streams episodes into a temporary file beside the target and
atomically renames it onto the target only when every episode is written and flushed, so a crash, a full disk or
Ctrl-C never leaves a half-written file and never harms an existing one. :func:`read_episodes` reads the file back
lazily, one episode at a time, and turns every kind of damage into a :class:`DatasetError` naming the file.
The layout is documented in ``docs/datasets.md``.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import math
import os
import pathlib
import secrets
import weakref
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import h5py
import numpy as np

from fleetrl import __version__

FORMAT = "fleetrl.episodes"
FORMAT_VERSION = 1
SUPPORTED_VERSIONS = (1,)

EPISODES = "episodes"
OBSERVATIONS = "observations"
STEP_KEYS = ("actions", "rewards", "terminated", "truncated", "success")
# Root attributes the writer owns; caller attrs may not shadow them.
ROOT_RESERVED = frozenset({"format", "format_version", "created", "fleetrl_version", "obs_spec", "action_spec",
                           "num_episodes", "total_steps", "success_rate"})
# Episode attributes the writer owns (derived from the arrays); the rest of an episode group's attrs are its own.
EPISODE_RESERVED = frozenset({"length", "is_success", "return"})

# Images: gzip level 4, one chunk per frame. Measured on 121 rendered 128x128x3 MuJoCo frames (docs/datasets.md):
# gzip-4 writes in ~38 ms and compresses 22x, lzf in ~20 ms and 10x. Writing is a few percent of collection time
# (the env and renderer dominate), files are half the size, and deflate is readable by every HDF5 build while lzf
# exists only in h5py. Per-frame chunks let a loader read single transitions without inflating the episode.
IMAGE_COMPRESSION: dict[str, Any] = {"compression": "gzip", "compression_opts": 4}

_FLOAT_KINDS = "f"
_OBS_KINDS = "fiub"  # float, signed/unsigned int, bool: anything HDF5 stores natively and numpy compares exactly


class DatasetError(ValueError):
    """A dataset file or episode is missing, malformed or cannot be written; the message names the file/key."""


def _is_scalar_attr(value: Any) -> bool:
    return isinstance(value, (str, bool, int, float, np.number, np.bool_, np.str_))


def _check_attrs(attrs: Mapping[str, Any], where: str, reserved: frozenset[str]) -> dict[str, Any]:
    """Return ``attrs`` as plain Python scalars, or raise if a key is reserved or a value is not a JSON scalar."""
    out: dict[str, Any] = {}
    for key, value in attrs.items():
        if not isinstance(key, str) or not key or "/" in key:
            raise DatasetError(f"{where}: attr name {key!r} must be a non-empty string without '/'")
        if key in reserved:
            raise DatasetError(f"{where}: attr {key!r} is reserved (written by fleetrl itself)")
        if not _is_scalar_attr(value):
            raise DatasetError(f"{where}: attr {key!r} must be a str, bool, int or float, got {type(value).__name__}")
        out[key] = value.item() if isinstance(value, np.generic) else value
    return out


def _spec(array: np.ndarray) -> dict[str, Any]:
    """Per-step shape and dtype of an array whose first axis is time."""
    return {"shape": list(array.shape[1:]), "dtype": array.dtype.name}


@dataclass(frozen=True, eq=False)
class Episode:
    """One episode of T steps: T+1 observations (reset + one per step), T actions/rewards/flags, and attrs.

    Construction validates (see :meth:`validate`); an invalid episode raises :class:`DatasetError`."""

    observations: dict[str, np.ndarray]
    actions: np.ndarray
    rewards: np.ndarray
    terminated: np.ndarray
    truncated: np.ndarray
    success: np.ndarray
    attrs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.validate()

    @classmethod
    def _checked(cls, where: str, **fields: Any) -> Episode:
        """Build and validate an episode whose errors are prefixed with ``where`` (file and group name)."""
        episode = object.__new__(cls)
        for key, value in fields.items():
            object.__setattr__(episode, key, value)
        episode.validate(where)
        return episode

    @property
    def label(self) -> str:
        """How error messages name this episode: by its seed when it has one."""
        return f"episode (seed={self.attrs['seed']})" if "seed" in self.attrs else "episode"

    def validate(self, where: str | None = None) -> None:
        """Check lengths (T+1 observations, T of everything else, T >= 1), dtypes, finiteness and end flags.

        Errors are :class:`DatasetError` prefixed with ``where`` (default: :attr:`label`) and naming the key."""
        where = where or self.label
        arrays = [("actions", self.actions, np.float32), ("rewards", self.rewards, np.float32),
                  ("terminated", self.terminated, np.bool_), ("truncated", self.truncated, np.bool_),
                  ("success", self.success, np.bool_)]
        for key, array, dtype in arrays:
            if not isinstance(array, np.ndarray):
                raise DatasetError(f"{where}: {key} must be a numpy array, got {type(array).__name__}")
            if array.dtype != dtype:
                raise DatasetError(f"{where}: {key} has dtype {array.dtype}, expected {np.dtype(dtype)}")
        if self.actions.ndim != 2:
            raise DatasetError(f"{where}: actions must have shape (T, A), got {self.actions.shape}")
        length = self.actions.shape[0]
        if length < 1:
            raise DatasetError(f"{where}: actions is empty; an episode needs at least one step")
        for key, array, _ in arrays[1:]:
            if array.shape != (length,):
                raise DatasetError(f"{where}: {key} has shape {array.shape}, but actions has {length} steps")
        if not isinstance(self.observations, Mapping) or not self.observations:
            raise DatasetError(f"{where}: observations must be a non-empty dict of arrays")
        for key, obs in self.observations.items():
            if not isinstance(key, str) or not key or "/" in key or key == ".":
                raise DatasetError(f"{where}: observation key {key!r} must be a non-empty string without '/'")
            if not isinstance(obs, np.ndarray) or obs.dtype.kind not in _OBS_KINDS:
                kind = obs.dtype if isinstance(obs, np.ndarray) else type(obs).__name__
                raise DatasetError(f"{where}: observations/{key} must be a numeric numpy array, got {kind}")
            if obs.ndim < 1 or obs.shape[0] != length + 1:
                raise DatasetError(f"{where}: observations/{key} has shape {obs.shape}; expected leading length "
                                   f"{length + 1} (the reset observation plus one per step of {length})")
        floats = [("actions", self.actions), ("rewards", self.rewards)]
        floats += [(f"observations/{k}", v) for k, v in self.observations.items() if v.dtype.kind in _FLOAT_KINDS]
        for key, array in floats:
            bad = ~np.isfinite(array)
            if bad.any():
                index = tuple(int(i) for i in np.argwhere(bad)[0])
                raise DatasetError(f"{where}: {key} is not finite at index {index} ({array[index]})")
        done = self.terminated | self.truncated
        if done[:-1].any():
            step = int(np.flatnonzero(done[:-1])[0])
            key = "terminated" if self.terminated[step] else "truncated"
            raise DatasetError(f"{where}: {key} is set at step {step} of {length}; only the last step may end it")
        if not done[-1]:
            raise DatasetError(f"{where}: terminated/truncated: the last step ends neither; an episode must end")
        _check_attrs(self.attrs, where, EPISODE_RESERVED)

    @property
    def length(self) -> int:
        """Number of steps T."""
        return int(self.actions.shape[0])

    @property
    def is_success(self) -> bool:
        """Whether info["success"] was true after any step."""
        return bool(self.success.any())

    @property
    def return_(self) -> float:
        """Undiscounted sum of rewards."""
        return float(self.rewards.sum(dtype=np.float64))

    def spec(self) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
        """(observation spec, action spec): per-step shapes and dtypes, as stored in the file's root attrs."""
        return {k: _spec(v) for k, v in sorted(self.observations.items())}, _spec(self.actions)


class _GuardedFile:
    """A file object for h5py's ``fileobj`` driver that never reports an I/O error to HDF5.

    Why: when a write fails (full disk, EFBIG) inside HDF5's own file driver, HDF5 2.0 is left inconsistent and
    the process segfaults on the next flush, on close or at exit, so the temporary file could not be cleaned up.
    Here the first failure (or a ``KeyboardInterrupt`` landing inside a callback) is recorded in :attr:`error`;
    from then on writes go to an in-memory overlay that reads consult, so HDF5 keeps a consistent view and can
    be closed. The writer checks :attr:`error` after every episode and discards the file. The overlay only lives
    for the rest of that one episode, so memory stays bounded."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.pos = 0
        self.size = 0
        self.error: BaseException | None = None
        self.overlay: list[tuple[int, bytes]] = []

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self.pos, os.SEEK_END: self.size}[whence]
        self.pos = base + offset
        return self.pos

    def tell(self) -> int:
        return self.pos

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        if self.error is None:
            try:
                done = 0
                while done < len(view):  # os.pwrite may write less than asked near a limit
                    done += os.pwrite(self.fd, view[done:], self.pos + done)
            except BaseException as exc:  # noqa: BLE001 - must not reach HDF5; the writer re-raises it after the episode
                self.error = exc
        if self.error is not None:
            self.overlay.append((self.pos, bytes(view)))
        self.pos += len(view)
        self.size = max(self.size, self.pos)
        return len(view)

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        done = 0
        try:
            while done < len(view):
                chunk = os.pread(self.fd, len(view) - done, self.pos + done)
                if not chunk:
                    break
                view[done:done + len(chunk)] = chunk
                done += len(chunk)
        except BaseException as exc:  # noqa: BLE001 - as in write()
            self.error = self.error or exc
        view[done:] = bytes(len(view) - done)  # past the end of what reached the disk
        end = self.pos + len(view)
        for offset, chunk in self.overlay:
            lo, hi = max(offset, self.pos), min(offset + len(chunk), end)
            if lo < hi:
                view[lo - self.pos:hi - self.pos] = chunk[lo - offset:hi - offset]
        self.pos = end
        return len(view)

    def read(self, size: int = -1) -> bytes:
        buffer = bytearray(max(0, self.size - self.pos) if size < 0 else size)
        self.readinto(buffer)
        return bytes(buffer)

    def truncate(self, size: int | None = None) -> int:
        size = self.pos if size is None else size
        if self.error is None:
            try:
                os.ftruncate(self.fd, size)
            except BaseException as exc:  # noqa: BLE001 - as in write()
                self.error = exc
        self.size = size
        return size

    def flush(self) -> None:
        """Nothing to do: writes are unbuffered; the writer fsyncs once at the end."""


def _cleanup(h5: h5py.File | None, fd: int | None, tmp: str) -> None:
    """Close and delete a temporary file; used on abort and by the finalizer of a writer never closed."""
    if h5 is not None:
        with contextlib.suppress(Exception):  # the file may be the thing that is broken; removing it is what matters
            h5.close()
    if fd is not None:
        with contextlib.suppress(OSError):
            os.close(fd)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)


class EpisodeFileWriter:
    """Stream episodes into an HDF5 file at ``path``, safely: all or nothing.

    Episodes go to ``.{name}.tmp-<pid>-<random>`` in the target's directory as they are added; :meth:`close`
    flushes, fsyncs, re-opens it to check it, and atomically renames it onto ``path``. On any failure (an exception
    in the ``with`` block, an ``OSError`` such as a full disk, ``KeyboardInterrupt``) the temporary file is removed
    and an existing file at ``path`` is untouched. An existing ``path`` is refused unless ``overwrite`` is true.
    All episodes must match the first one's observation keys/shapes/dtypes and action shape; a mismatch raises
    before anything of that episode is written."""

    def __init__(self, path: str | os.PathLike[str], attrs: Mapping[str, Any] | None = None,
                 overwrite: bool = False) -> None:
        self.path = pathlib.Path(path)
        self._attrs = _check_attrs(attrs or {}, f"{self.path}", ROOT_RESERVED)
        self._h5: h5py.File | None = None
        self._fd: int | None = None
        self._done = False
        self._aborted = False
        self._count = 0
        self._steps = 0
        self._successes = 0
        self._spec: tuple[dict[str, dict[str, Any]], dict[str, Any]] | None = None
        # All path checks happen here, before the caller spends time collecting episodes.
        if self.path.is_dir():
            raise DatasetError(f"{self.path}: is a directory; give a file path such as {self.path / 'episodes.h5'}")
        parent = self.path.parent
        if not parent.exists():
            raise DatasetError(f"{self.path}: parent directory {parent} does not exist")
        if not parent.is_dir():
            raise DatasetError(f"{self.path}: parent {parent} is not a directory")
        if self.path.exists() and not overwrite:
            raise DatasetError(f"{self.path}: file exists; pass overwrite=True (fleetrl collect --overwrite) "
                               "to replace it")
        self._tmp = str(parent / f".{self.path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
        try:
            self._fd = os.open(self._tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
        except OSError as exc:
            raise DatasetError(f"{self.path}: cannot create a file in {parent}: {exc.strerror}") from exc
        self._io = _GuardedFile(self._fd)
        try:
            self._h5 = h5py.File(self._io, "w")
            self._episodes = self._h5.create_group(EPISODES)
            self._h5.flush()
            self._raise_io_error("creating the file")
        except BaseException:
            _cleanup(self._h5, self._fd, self._tmp)
            raise
        self._finalizer = weakref.finalize(self, _cleanup, self._h5, self._fd, self._tmp)

    def __enter__(self) -> EpisodeFileWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    @property
    def num_episodes(self) -> int:
        """Episodes added so far."""
        return self._count

    def _raise_io_error(self, what: str) -> None:
        error = self._io.error
        if error is None:
            return
        if not isinstance(error, Exception):
            raise error  # KeyboardInterrupt and friends stay what they are
        raise DatasetError(f"{self.path}: {what} failed, nothing was written: {error}") from error

    def add(self, episode: Episode) -> None:
        """Validate ``episode``, check it matches the first episode's spec, and append it to the file now."""
        if self._done or self._h5 is None:
            raise DatasetError(f"{self.path}: writer is already {'aborted' if self._aborted else 'closed'}")
        index = self._count
        if not isinstance(episode, Episode):
            raise DatasetError(f"{self.path}: episode {index}: expected an Episode, got {type(episode).__name__}")
        # Again, although construction validated: the dataclass is frozen but its arrays are mutable.
        episode.validate(f"{self.path}: episode {index} ({episode.label})")
        spec = episode.spec()
        if self._spec is None:
            self._spec = spec
        else:
            _compare_spec(self._spec, spec, f"{self.path}: episode {index}", "the first episode")
        try:
            self._write(f"{index:06d}", episode)
            self._raise_io_error(f"writing episode {index}")
        except BaseException as exc:
            # A half-written episode group cannot be trusted, so the whole file goes.
            self.abort()
            if isinstance(exc, Exception) and not isinstance(exc, DatasetError):
                raise DatasetError(f"{self.path}: writing episode {index} failed, nothing was written: {exc}") from exc
            raise
        self._count += 1
        self._steps += episode.length
        self._successes += episode.is_success

    def _write(self, name: str, episode: Episode) -> None:
        group = self._episodes.create_group(name)
        obs = group.create_group(OBSERVATIONS)
        for key, array in episode.observations.items():
            if array.dtype == np.uint8 and array.ndim >= 3:  # images: compress, one chunk per frame
                obs.create_dataset(key, data=array, chunks=(1, *array.shape[1:]), **IMAGE_COMPRESSION)
            else:  # small vectors: contiguous and uncompressed, compression would cost more than it saves
                obs.create_dataset(key, data=array)
        for key in STEP_KEYS:
            group.create_dataset(key, data=getattr(episode, key))
        group.attrs.update(episode.attrs)
        group.attrs["length"] = episode.length
        group.attrs["is_success"] = episode.is_success
        group.attrs["return"] = episode.return_
        # Flush each episode so it reaches the OS as it comes (bounded memory) and a full disk shows up here.
        self._h5.flush()  # type: ignore[union-attr]

    def close(self) -> None:
        """Write the summary attrs, flush and fsync, verify, and atomically rename onto the target path.

        Raises :class:`DatasetError` (after removing the temporary file) if no episode was added or writing fails."""
        if self._done:
            if self._aborted:
                raise DatasetError(f"{self.path}: writer was aborted; nothing was written")
            return
        if self._count == 0 or self._spec is None:
            self.abort()
            raise DatasetError(f"{self.path}: no episodes were added; refusing to write an empty dataset")
        h5, fd = self._h5, self._fd
        assert h5 is not None and fd is not None
        obs_spec, action_spec = self._spec
        try:
            h5.attrs.update(self._attrs)
            h5.attrs.update({
                "format": FORMAT, "format_version": FORMAT_VERSION,
                "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                "fleetrl_version": __version__,
                "obs_spec": json.dumps(obs_spec), "action_spec": json.dumps(action_spec),
                "num_episodes": self._count, "total_steps": self._steps,
                "success_rate": self._successes / self._count,
            })
            h5.close()
            self._h5 = None
            self._raise_io_error("finishing the file")
            os.fsync(fd)  # data on disk before the rename makes it visible
            os.close(fd)
            self._fd = None
            # Re-read the header and counts with HDF5's own driver: what a reader will see.
            info = dataset_info(self._tmp)
            if (info["num_episodes"], info["total_steps"]) != (self._count, self._steps):
                raise DatasetError(f"read back {info['num_episodes']} episodes / {info['total_steps']} steps, "
                                   f"wrote {self._count} / {self._steps}")
            os.replace(self._tmp, self.path)  # atomic on POSIX: readers see the old file or the new one
            _fsync_dir(self.path.parent)
        except BaseException as exc:
            self.abort()
            ours = isinstance(exc, DatasetError) and str(exc).startswith(str(self.path))
            if isinstance(exc, Exception) and not ours:
                raise DatasetError(f"{self.path}: finishing the file failed, nothing was written: {exc}") from exc
            raise
        self._done = True
        self._finalizer.detach()

    def abort(self) -> None:
        """Discard everything: close and delete the temporary file. The target path is not touched."""
        if self._done and not self._aborted:
            return  # already committed; aborting now would be a lie
        self._done = self._aborted = True
        h5, self._h5 = self._h5, None
        fd, self._fd = self._fd, None
        self._finalizer.detach()
        _cleanup(h5, fd, self._tmp)


def _fsync_dir(directory: pathlib.Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)  # make the rename itself durable
    finally:
        os.close(fd)


def _compare_spec(want: tuple[dict[str, Any], dict[str, Any]], got: tuple[dict[str, Any], dict[str, Any]],
                  where: str, reference: str) -> None:
    """Raise naming the first key whose per-step shape/dtype differs from ``want`` (described as ``reference``)."""
    want_obs, want_action = want
    got_obs, got_action = got
    for key in sorted(set(want_obs) | set(got_obs)):
        if key not in got_obs:
            raise DatasetError(f"{where}: observations/{key} is missing ({reference} has it)")
        if key not in want_obs:
            raise DatasetError(f"{where}: observations/{key} is unexpected ({reference} does not have it)")
        if want_obs[key] != got_obs[key]:
            raise DatasetError(f"{where}: observations/{key} has per-step {_fmt(got_obs[key])}, "
                               f"expected {_fmt(want_obs[key])} like {reference}")
    if want_action != got_action:
        raise DatasetError(f"{where}: actions has per-step {_fmt(got_action)}, "
                           f"expected {_fmt(want_action)} like {reference}")


def _fmt(spec: Mapping[str, Any]) -> str:
    return f"shape {tuple(spec['shape'])} dtype {spec['dtype']}"


# ---------------------------------------------------------------------------------------------------------- reading


@contextlib.contextmanager
def _open(path: str | os.PathLike[str]) -> Iterator[tuple[h5py.File, dict[str, Any]]]:
    """Open a dataset file and check its header; yield the file and its root attrs as Python values."""
    name = str(path)
    if not os.path.exists(name):
        raise DatasetError(f"{name}: no such file")
    if os.path.isdir(name):
        raise DatasetError(f"{name}: is a directory, not a dataset file")
    try:
        # Default locking on purpose: HDF5 refuses to open one file twice in a process with different locking flags,
        # so anything else would clash with plain h5py users. (HDF5_USE_FILE_LOCKING=FALSE for lockless NFS.)
        h5 = h5py.File(name, "r")
    except OSError as exc:
        # h5py says "file signature not found" or "truncated file"; both mean the file is not a usable dataset.
        raise DatasetError(f"{name}: not a readable HDF5 file (corrupt, truncated or another format): {exc}") from None
    with h5:
        try:
            attrs = {k: _py(v) for k, v in h5.attrs.items()}
        except (OSError, RuntimeError, KeyError, ValueError) as exc:
            raise DatasetError(f"{name}: cannot read the root attrs (corrupt file?): {exc}") from None
        if attrs.get("format") != FORMAT:
            raise DatasetError(f"{name}: not a fleetrl episode dataset (format attr is {attrs.get('format')!r}, "
                               f"expected {FORMAT!r})")
        version = attrs.get("format_version")
        if version not in SUPPORTED_VERSIONS:
            raise DatasetError(f"{name}: format_version {version!r} is not supported (this fleetrl reads "
                               f"{', '.join(map(str, SUPPORTED_VERSIONS))}); upgrade fleetrl")
        for key in ("obs_spec", "action_spec"):
            try:
                attrs[key] = json.loads(attrs[key])
            except (KeyError, TypeError, ValueError):
                raise DatasetError(f"{name}: root attr {key!r} is missing or not JSON") from None
        if not isinstance(h5.get(EPISODES), h5py.Group):
            raise DatasetError(f"{name}: has no {EPISODES!r} group")
        yield h5, attrs


def _py(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value


def _episode_names(h5: h5py.File, name: str, attrs: Mapping[str, Any]) -> list[str]:
    names = list(h5[EPISODES].keys())
    bad = [n for n in names if not n.isdigit()]
    if bad:
        raise DatasetError(f"{name}: unexpected entry {EPISODES}/{bad[0]} (episode groups are named 000000, ...)")
    names.sort(key=int)  # numeric, so files with a million or more episodes keep insertion order too
    if len(names) != attrs.get("num_episodes"):
        raise DatasetError(f"{name}: holds {len(names)} episode groups but num_episodes says "
                           f"{attrs.get('num_episodes')!r}; the file was modified or damaged")
    return names


def dataset_info(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Root attrs (specs parsed from JSON) plus ``path`` and checked counts, without reading any array."""
    name = str(path)
    with _open(path) as (h5, attrs):
        names = _episode_names(h5, name, attrs)
        try:
            steps = sum(int(h5[EPISODES][n].attrs["length"]) for n in names)
        except (KeyError, OSError, RuntimeError, ValueError, TypeError) as exc:
            raise DatasetError(f"{name}: cannot read episode lengths (corrupt file?): {exc}") from None
        if steps != attrs.get("total_steps"):
            raise DatasetError(f"{name}: episodes hold {steps} steps but total_steps says {attrs.get('total_steps')!r}")
        return {"path": name, **attrs, "num_episodes": len(names), "total_steps": steps}


def read_episodes(path: str | os.PathLike[str]) -> Iterator[Episode]:
    """Yield the file's episodes in insertion order, one in memory at a time; each is fully validated.

    The header is checked now (a missing or foreign file raises here); episode damage raises when reached."""
    dataset_info(path)
    return _iter_episodes(str(path))


def _iter_episodes(name: str) -> Iterator[Episode]:
    with _open(name) as (h5, attrs):
        spec = (attrs["obs_spec"], attrs["action_spec"])
        for ep_name in _episode_names(h5, name, attrs):
            where = f"{name}: episode {ep_name}"
            try:
                episode = _read_episode(h5[EPISODES][ep_name], where)
            except DatasetError:
                raise
            except (OSError, RuntimeError, KeyError, TypeError, ValueError) as exc:
                raise DatasetError(f"{where}: cannot read (corrupt file?): {exc}") from None
            _compare_spec(spec, episode.spec(), where, "the file's obs_spec/action_spec")
            yield episode


def load_episodes(path: str | os.PathLike[str]) -> list[Episode]:
    """All episodes of the file, in insertion order."""
    return list(read_episodes(path))


def _read_episode(group: Any, where: str) -> Episode:
    if not isinstance(group, h5py.Group):
        raise DatasetError(f"{where}: is not a group")
    obs_group = group.get(OBSERVATIONS)
    if not isinstance(obs_group, h5py.Group):
        raise DatasetError(f"{where}: key {OBSERVATIONS!r} is missing")
    arrays: dict[str, np.ndarray] = {}
    for key in STEP_KEYS:
        ds = group.get(key)
        if not isinstance(ds, h5py.Dataset):
            raise DatasetError(f"{where}: key {key!r} is missing")
        arrays[key] = ds[()]
    observations = {}
    for key, ds in obs_group.items():
        if not isinstance(ds, h5py.Dataset):
            raise DatasetError(f"{where}: key {OBSERVATIONS}/{key} is not a dataset")
        observations[key] = ds[()]
    own = {k: _py(v) for k, v in group.attrs.items() if k not in EPISODE_RESERVED}
    episode = Episode._checked(where, observations=observations, attrs=own, **arrays)
    stored = group.attrs.get("length")
    if stored is not None and int(stored) != episode.length:
        raise DatasetError(f"{where}: attr length is {int(stored)} but actions has {episode.length} steps")
    stored_return = group.attrs.get("return")
    if stored_return is not None and not math.isclose(float(stored_return), episode.return_, rel_tol=1e-9,
                                                      abs_tol=1e-9):
        raise DatasetError(f"{where}: attr return is {float(stored_return)} but rewards sum to {episode.return_}")
    return episode
