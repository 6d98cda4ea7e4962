"""Sends what the eval callbacks make (videos, tables, files) to every experiment logger: TensorBoard, W&B, MLflow.

Scalars need nothing of ours: ``self.log`` and ``logger.log_metrics`` reach
every Lightning logger. Videos, text tables and files do not, so the callbacks
hand them to the functions here, which send each one the way its logger takes it:

=============== ============================= ================================ ===========================
what            TensorBoard                   W&B (``WandbLogger``)            MLflow (``MLFlowLogger``)
=============== ============================= ================================ ===========================
video           ``add_video`` (a GIF)         ``wandb.Video`` of the file      the file as an artifact
table           markdown ``add_text``         ``wandb.Table``                  markdown ``log_text``
file (CSV, PNG) (not sent)                    a run file (``run.save``)        the file as an artifact
=============== ============================= ================================ ===========================

W&B and MLflow are imported by their Lightning loggers, never here: a run
without them installed never touches them. Other loggers (``CSVLogger``) are skipped.
"""
from __future__ import annotations

import importlib.util
import weakref
from pathlib import Path

import numpy as np
import torch

TENSORBOARD, WANDB, MLFLOW = "tensorboard", "wandb", "mlflow"
#: files each W&B logger already watches (``policy="live"`` re-syncs a rewritten file by itself)
_WATCHED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def logger_kind(logger) -> str | None:
    """Which of the three a Lightning logger is (``None``: another kind, left alone)."""
    from lightning.pytorch.loggers import MLFlowLogger, WandbLogger

    if isinstance(logger, WandbLogger):
        return WANDB
    if isinstance(logger, MLFlowLogger):
        return MLFLOW
    # any logger whose experiment is a SummaryWriter (Lightning's TensorBoardLogger, or a user's)
    writer = getattr(logger, "experiment", None)
    return TENSORBOARD if hasattr(writer, "add_video") and hasattr(writer, "add_text") else None


def kinds(loggers) -> set[str]:
    """The kinds among ``loggers``."""
    return {k for k in map(logger_kind, loggers) if k is not None}


def _artifact_dir(path: Path, folder: str) -> str:
    return folder.strip("/") or path.parent.name


def log_video(logger, tag: str, path: Path, *, step: int, clip: np.ndarray | None = None,
              gif: bytes | None = None, fps: float = 4.0, folder: str = "") -> bool:
    """The video file at ``path`` (GIF or MP4) on ``logger``; False if the logger takes no videos.

    TensorBoard shows videos as animated GIFs: it gets ``gif`` (the encoded
    clip) and ``clip`` (``[T, H, W, 3]`` uint8, for ``add_video`` when moviepy is
    installed). MLflow stores the file under ``folder`` of the run's artifacts.
    """
    kind = logger_kind(logger)
    if kind == WANDB:
        logger.log_video(tag, videos=[str(path)], step=step, format=[path.suffix.lstrip(".")])
    elif kind == MLFLOW:
        logger.experiment.log_artifact(logger.run_id, str(path), _artifact_dir(path, folder))
    elif kind == TENSORBOARD and clip is not None and gif is not None:
        tensorboard_video(logger.experiment, tag, clip, gif, step, fps)
    else:
        return False
    return True


def tensorboard_video(writer, tag: str, clip: np.ndarray, gif: bytes, step: int, fps: float) -> None:
    """A clip on a TensorBoard ``SummaryWriter``: ``add_video`` with moviepy, else the GIF as an image summary."""
    if importlib.util.find_spec("moviepy") is not None:
        video = torch.from_numpy(clip).permute(0, 3, 1, 2).unsqueeze(0)  # [1, T, C, H, W]
        writer.add_video(tag, video, global_step=step, fps=fps)
        return
    from tensorboard.compat.proto.summary_pb2 import Summary
    from torch.utils.tensorboard.writer import FileWriter

    # add_video's own output without moviepy: an image summary holding the encoded GIF. No public
    # SummaryWriter method takes a ready-made summary; its public `file_writer` attribute does (None
    # once the writer is closed, as after a finished fit: then a FileWriter of its own in the same dir)
    image = Summary.Image(height=clip.shape[1], width=clip.shape[2], colorspace=3, encoded_image_string=gif)
    summary = Summary(value=[Summary.Value(tag=tag, image=image)])
    if getattr(writer, "file_writer", None) is not None:
        writer.file_writer.add_summary(summary, step)
    else:
        own = FileWriter(writer.get_logdir())
        own.add_summary(summary, step)
        own.close()


def log_table(logger, tag: str, *, markdown: str, columns: list[str], rows: list[list], step: int,
              folder: str = "") -> bool:
    """A table on ``logger``: markdown text (TensorBoard, and MLflow as ``<folder>/<tag>/step_<step>.md``)
    or a ``wandb.Table`` of ``columns`` x ``rows``; False if the logger takes no tables."""
    kind = logger_kind(logger)
    if kind == WANDB:
        logger.log_table(tag, columns=list(columns), data=[list(r) for r in rows], step=step)
    elif kind == MLFLOW:
        name = "/".join(p for p in (folder.strip("/"), tag, f"step_{step:06d}.md") if p)
        logger.experiment.log_text(logger.run_id, markdown, name)
    elif kind == TENSORBOARD:
        logger.experiment.add_text(tag, markdown, step)
    else:
        return False
    return True


def log_file(logger, path: Path, *, folder: str = "") -> bool:
    """A file the run wrote (CSV, PNG) kept with ``logger``'s run: an MLflow artifact under ``folder``,
    a W&B run file (``run.save``, re-synced when rewritten); False for other loggers (TensorBoard)."""
    kind = logger_kind(logger)
    if kind == WANDB:
        watched = _WATCHED.setdefault(logger, set())
        if str(path) not in watched:
            logger.experiment.save(str(path), base_path=str(path.parent), policy="live")
            watched.add(str(path))
    elif kind == MLFLOW:
        logger.experiment.log_artifact(logger.run_id, str(path), _artifact_dir(path, folder))
    else:
        return False
    return True


__all__ = ["MLFLOW", "TENSORBOARD", "WANDB", "kinds", "log_file", "log_table", "log_video", "logger_kind",
           "tensorboard_video"]
