"""Checkpoint files: written atomically (:class:`AtomicCheckpointIO`), and policy weights loaded
from a Lightning checkpoint (SFT or GRPO) into a policy.

Lightning's own ``_atomic_save`` writes to a temporary file from ``tempfile.mkstemp`` (in
``/tmp``) and moves it into place; when ``/tmp`` is another filesystem than the run
directory that move is a copy, and a kill during it leaves a truncated checkpoint where the
previous one was. :class:`AtomicCheckpointIO` writes next to the target, fsyncs, and renames.
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

POLICY_PREFIX = "policy."


def policy_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The ``policy.*`` weights of a ``.ckpt`` file, prefix stripped."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"`--model.init_from`: no checkpoint file at {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # torch raises several types for a corrupt file
        raise ValueError(f"`--model.init_from`: {path} is not a readable checkpoint ({type(err).__name__})") from None
    state = ckpt.get("state_dict") if isinstance(ckpt, dict) else None
    if not isinstance(state, dict):
        raise ValueError(f"`--model.init_from`: {path} has no 'state_dict' (expected a Lightning .ckpt)")
    weights = {k[len(POLICY_PREFIX):]: v for k, v in state.items() if k.startswith(POLICY_PREFIX)}
    if not weights:
        raise ValueError(f"`--model.init_from`: {path} holds no 'policy.*' weights")
    return weights


def load_policy_weights(policy: torch.nn.Module, path: str | Path) -> None:
    """Load a checkpoint's policy weights (and its action-normalization stats) strictly."""
    weights = policy_state_dict(path)
    own = policy.state_dict()
    missing = sorted(set(own) - set(weights))
    unexpected = sorted(set(weights) - set(own))
    shapes = [k for k in own if k in weights and own[k].shape != weights[k].shape]
    if missing or unexpected or shapes:
        detail = "; ".join(
            f"{label}: {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}"
            for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", shapes))
            if keys
        )
        raise ValueError(f"`--model.init_from`: {path} does not fit the configured policy ({detail})")
    policy.load_state_dict(weights)
