"""Checkpoint files written all-or-nothing: :class:`AtomicCheckpointIO` (the CLI's default ``CheckpointIO``).

Lightning's own ``_atomic_save`` writes to a temporary file from ``tempfile.mkstemp`` (in
``/tmp``) and moves it into place; when ``/tmp`` is another filesystem than the run
directory that move is a copy, and a kill during it leaves a truncated checkpoint where the
previous one was. :class:`AtomicCheckpointIO` writes next to the target, fsyncs, and renames.
Loading a checkpoint's policy weights is :mod:`vla_grpo.init_from`'s job.
"""
from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.plugins.io import TorchCheckpointIO


class CheckpointWriteError(RuntimeError):
    """A checkpoint could not be written (full disk, unwritable directory); the previous one is intact."""


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` whose local saves are all-or-nothing: a kill or a full disk during a
    save leaves the previous checkpoint at the path, loadable. Remote paths go to Lightning's writer."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"`storage_options` is not supported by {type(self).__name__}")
        from fsspec.implementations.local import LocalFileSystem

        if not isinstance(get_filesystem(path), LocalFileSystem):
            return super().save_checkpoint(checkpoint, path, storage_options)
        path = Path(path)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            for stale in path.parent.glob(f".{path.name}.tmp-*"):  # left by a process killed mid-save
                stale.unlink(missing_ok=True)
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)  # atomic on one filesystem: the old file or the new one, never half
            dir_fd = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError as err:
            tmp.unlink(missing_ok=True)
            reason = {errno.ENOSPC: "the disk is full", errno.EACCES: "permission denied",
                      errno.EROFS: "read-only filesystem"}.get(err.errno, err.strerror or type(err).__name__)
            raise CheckpointWriteError(f"could not write checkpoint {path}: {reason}; the previous checkpoint "
                                       "there (if any) is intact") from None


__all__ = ["AtomicCheckpointIO", "CheckpointWriteError"]
