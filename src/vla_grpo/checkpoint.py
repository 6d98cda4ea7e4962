"""Checkpoints written all-or-nothing: :class:`AtomicCheckpointIO` (the CLI's default ``CheckpointIO``) for
checkpoint files, :class:`AtomicModelParallelStrategy` for FSDP2's sharded checkpoint folders.

Lightning's own ``_atomic_save`` writes to a temporary file from ``tempfile.mkstemp`` (in
``/tmp``) and moves it into place; when ``/tmp`` is another filesystem than the run
directory that move is a copy, and a kill during it leaves a truncated checkpoint where the
previous one was. :class:`AtomicCheckpointIO` writes next to the target, fsyncs, and renames.
Loading a checkpoint's policy weights is :mod:`vla_grpo.init_from`'s job.
"""
from __future__ import annotations

import errno
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.strategies import ModelParallelStrategy


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


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink(missing_ok=True)
    elif path.is_dir():
        shutil.rmtree(path, ignore_errors=True)


def publish_folder(folder: Path, path: Path) -> None:
    """Make ``path`` name the complete checkpoint folder ``folder`` (a sibling), atomically.

    ``path`` becomes a relative symlink to ``folder``, swapped in with one rename: at every instant it
    names the previous complete checkpoint or this one. The previous folder (and any partial one a
    killed save left) is removed afterwards. A real folder or file at ``path`` (written by Lightning's
    own writer) is moved aside first: the one moment ``path`` is missing, with both checkpoints on disk.
    """
    for f in folder.rglob("*"):  # torch.distributed.checkpoint fsyncs its shards; Lightning's meta.pt is not
        if f.is_file():
            with open(f, "rb+") as fh:
                os.fsync(fh.fileno())
    previous: Path | None = None
    if path.is_symlink():
        previous = path.parent / os.readlink(path)
    elif path.exists():
        previous = path.with_name(f"{folder.name}.old")
        os.replace(path, previous)
    link = path.with_name(f"{folder.name}.link")
    link.unlink(missing_ok=True)
    os.symlink(folder.name, link)
    os.replace(link, path)
    _fsync_dir(path.parent)
    for stale in path.parent.glob(f".{path.name}.*"):  # the previous folder, and partial ones of killed saves
        if stale.name != folder.name:
            _remove(stale)
    if previous is not None and previous.exists() and previous.name != folder.name:
        _remove(previous)


class AtomicModelParallelStrategy(ModelParallelStrategy):
    """Lightning's ``ModelParallelStrategy`` (FSDP2) whose sharded checkpoints are all-or-nothing.

    Lightning writes a sharded checkpoint (one ``.distcp`` file per rank and ``meta.pt``) into the target
    folder in place: a kill during the save leaves a mix of the old and new shards at ``last.ckpt``.
    Here every rank writes into a hidden sibling folder (``.last.ckpt.<token>``) through Lightning's own
    writer, and once all have finished rank 0 publishes it (:func:`publish_folder`): ``last.ckpt`` is a
    symlink that only ever points at a complete folder. Loading is Lightning's, through the link.
    The CLI uses this class wherever a config names Lightning's.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], filepath, storage_options: Any | None = None) -> None:
        # `_save_distributed_checkpoint`: Lightning's name for its `save_distributed_checkpoint` argument
        if not self._save_distributed_checkpoint:  # one whole file, through the (atomic) CheckpointIO
            return super().save_checkpoint(checkpoint, filepath, storage_options)
        path = Path(self.broadcast(str(filepath)))
        token = self.broadcast(uuid.uuid4().hex[:12])
        folder = path.with_name(f".{path.name}.{token}")
        super().save_checkpoint(checkpoint, folder, storage_options)
        self.barrier("vla_grpo_sharded_save")  # every rank's shard is on disk
        if self.global_rank == 0:
            publish_folder(folder, path)
        self.barrier("vla_grpo_sharded_publish")

    def remove_checkpoint(self, filepath) -> None:
        # ModelCheckpoint's top-k pruning: the link and the folder it names (fsspec refuses to rmtree a link)
        path = Path(filepath)
        if self.is_global_zero and path.is_symlink():
            target = path.parent / os.readlink(path)
            path.unlink()
            _remove(target)
            return
        super().remove_checkpoint(filepath)


__all__ = ["AtomicCheckpointIO", "AtomicModelParallelStrategy", "CheckpointWriteError", "publish_folder"]
