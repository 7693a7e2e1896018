"""The file object :class:`~fleetrl.datasets.writer.EpisodeFileWriter` hands to HDF5 instead of a path.

It exists because HDF5 2.0 (h5py 3.16) segfaults after a failed write; see :class:`GuardedFile`.
"""

from __future__ import annotations

import os
from typing import Any


class GuardedFile:
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
