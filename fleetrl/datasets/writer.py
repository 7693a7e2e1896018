"""Writing episode datasets: :class:`EpisodeFileWriter`, all or nothing via a temporary file and an atomic rename."""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import pathlib
import secrets
import weakref
from collections.abc import Mapping
from typing import Any

import h5py
import numpy as np

from fleetrl import __version__
from fleetrl.datasets.episode import (
    EPISODES,
    FORMAT,
    FORMAT_VERSION,
    IMAGE_COMPRESSION,
    OBSERVATIONS,
    ROOT_RESERVED,
    STEP_KEYS,
    DatasetError,
    Episode,
    check_attrs,
    compare_spec,
)
from fleetrl.datasets.guarded_file import GuardedFile
from fleetrl.datasets.reader import dataset_info


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
        self._attrs = check_attrs(attrs or {}, f"{self.path}", ROOT_RESERVED)
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
        self._io = GuardedFile(self._fd)
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
            compare_spec(self._spec, spec, f"{self.path}: episode {index}", "the first episode")
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
