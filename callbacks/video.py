"""Videos of a few greedy eval episodes per split (``EvalVideo``).

After each :class:`~vla_grpo.callbacks.SplitEvaluation` evaluation, rank 0
re-runs the first ``episodes_per_split`` greedy episodes of every split (greedy
rollouts are deterministic, so they are the evaluated episodes) and writes one
animated GIF per split, the episodes side by side: each tile is captioned with
its task, framed grey while the episode runs and green (success) or red
(failure) from its last step on. GIF because no mp4 encoder ships with the
environment (imageio-ffmpeg / PyAV are not installed). The same GIF goes to
TensorBoard as a video (``add_video`` when moviepy is installed, else the
encoded GIF as an image summary, which is what ``add_video`` writes).
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import numpy as np
import torch

from vla_grpo.envs.base import Suite
from vla_grpo.envs.scene.evaluate import SplitResult, task_label
from vla_grpo.evaluation import EvalItem, run_greedy
from vla_grpo.prompts import Prompt
from vla_grpo.sharding import is_sharded

from .split_eval import SplitEvalListener

_GREEN, _RED, _GREY = (40, 200, 70), (220, 40, 40), (110, 110, 110)


@dataclass
class Episode:
    """One recorded episode: ``frames`` uint8 ``[T, H, W, 3]`` (first to last observation)."""

    split: str
    task: str
    frames: np.ndarray
    success: bool


def video_prompts(suite: Suite, split: str, k: int) -> list[Prompt]:
    """The first ``k`` episodes of a split, state-major (every task's state 0, then state 1, ...)."""
    tasks = suite.tasks(split)
    out = [Prompt(suite.task_index(t.name), s) for s in range(k) for t in tasks if s < t.num_init_states]
    return out[:k]


def record_episodes(rollout, policy, suite: Suite, requests: list[tuple[str, Prompt]]) -> list[Episode]:
    """Greedy episodes for ``(split, prompt)`` requests, with their frames (:func:`~vla_grpo.evaluation.run_greedy`
    on every request: each rank that calls it plays them all)."""
    items = [EvalItem(split, prompt) for split, prompt in requests]
    run = run_greedy(rollout, policy, items, frames=True)
    tasks = suite.all_tasks()
    return [Episode(it.split, task_label(it.split, tasks[it.prompt.task_index].name), frames, ok)
            for it, ok, frames in zip(run.items, run.success, run.frames, strict=True)]


def _tile(frame: np.ndarray, scale: int, border: int, colour: tuple[int, int, int], caption: str,
          caption_h: int) -> np.ndarray:
    from PIL import Image, ImageDraw

    img = frame.repeat(scale, 0).repeat(scale, 1)
    h, w = img.shape[:2]
    out = np.zeros((h + 2 * border + caption_h, w + 2 * border, 3), dtype=np.uint8)
    out[caption_h:] = colour
    out[caption_h + border:caption_h + border + h, border:border + w] = img
    canvas = Image.fromarray(out)
    ImageDraw.Draw(canvas).text((3, 2), caption, fill=colour if colour != _GREY else (230, 230, 230))
    return np.asarray(canvas)


def compose_clip(episodes: list[Episode], *, tile_size: int = 128, border: int = 4,
                 hold_frames: int = 4) -> np.ndarray:
    """The episodes side by side as one clip ``[T, H, W, 3]``.

    Shorter episodes hold their last frame; the last frame is held another
    ``hold_frames`` frames so the outcome stays readable before the GIF loops.
    """
    length = max(len(e.frames) for e in episodes) + hold_frames
    scale = max(1, tile_size // episodes[0].frames.shape[1])
    chars = max(8, episodes[0].frames.shape[2] * scale // 6)  # PIL's default font: ~6 px a glyph
    clip = []
    for t in range(length):
        tiles = []
        for ep in episodes:
            done = t >= len(ep.frames) - 1
            colour = (_GREEN if ep.success else _RED) if done else _GREY
            verdict = (" ok" if ep.success else " fail") if done else ""
            caption = ep.task[: chars - len(verdict)] + verdict
            tiles.append(_tile(ep.frames[min(t, len(ep.frames) - 1)], scale, border, colour, caption, 14))
        clip.append(np.concatenate(tiles, axis=1))
    return np.stack(clip)


def write_gif(clip: np.ndarray, path: Path, fps: float) -> bytes:
    """Writes ``clip`` as a looping GIF at ``path``; returns its bytes."""
    import imageio.v3 as iio

    data = iio.imwrite("<bytes>", clip, extension=".gif", duration=1000.0 / fps, loop=0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return data


def log_video(logger, tag: str, clip: np.ndarray, gif: bytes, step: int, fps: float) -> bool:
    """A clip on a TensorBoard logger; False if the logger has no TensorBoard writer."""
    writer = getattr(logger, "experiment", None)
    if writer is None or not hasattr(writer, "add_video"):
        return False
    if importlib.util.find_spec("moviepy") is not None:
        video = torch.from_numpy(clip).permute(0, 3, 1, 2).unsqueeze(0)  # [1, T, C, H, W]
        writer.add_video(tag, video, global_step=step, fps=fps)
        return True
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
    return True


class EvalVideo(SplitEvalListener):
    """A GIF per split of a few greedy eval episodes, after each evaluation.

    Files go to ``<dirpath>/step_<step>/<split>.gif`` (default dir
    ``<run dir>/eval/videos``) and to TensorBoard as ``eval_video/<split>``.

    Args:
        episodes_per_split: episodes shown per split (tasks first, then more states).
        splits: splits to film (``None``: every split the evaluation covered).
        every_n_evals: film every this many evaluations (validate/test always).
        fps: frames (policy decisions) per second.
        tile_size: approximate pixel side of one episode's tile (images are upscaled).
        dirpath: where the GIFs go.
        tensorboard: also log the clips to TensorBoard loggers.
    """

    default_subdir = "eval/videos"

    def __init__(self, episodes_per_split: int = 4, splits: list[str] | None = None, every_n_evals: int = 1,
                 fps: float = 4.0, tile_size: int = 128, dirpath: str | None = None,
                 tensorboard: bool = True) -> None:
        if episodes_per_split < 1:
            raise ValueError(f"`EvalVideo.episodes_per_split` must be >= 1 (got {episodes_per_split})")
        if every_n_evals < 1:
            raise ValueError(f"`EvalVideo.every_n_evals` must be >= 1 (got {every_n_evals})")
        self.episodes_per_split = episodes_per_split
        self.splits = list(splits) if splits else None
        self.every_n_evals = every_n_evals
        self.fps = fps
        self.tile_size = tile_size
        self.dirpath = dirpath
        self.tensorboard = tensorboard
        self.written: list[Path] = []
        self._evals = 0

    def on_split_evaluation_end(self, trainer: L.Trainer, pl_module, result: SplitResult) -> None:
        self._evals += 1
        due = result.stage != "fit" or (self._evals - 1) % self.every_n_evals == 0
        # an FSDP-sharded policy gathers its weights for a rollout on every rank together: all ranks
        # roll the episodes out then, and rank 0 alone writes them
        together = is_sharded(pl_module.policy)
        if not (due and (trainer.is_global_zero or together) and getattr(pl_module, "rollout", None) is not None):
            return
        splits = [s for s in (self.splits or list(result.counts)) if s in pl_module.suite.splits]
        requests = [(s, p) for s in splits for p in video_prompts(pl_module.suite, s, self.episodes_per_split)]
        episodes = record_episodes(pl_module.rollout, pl_module.policy, pl_module.suite, requests)
        if not trainer.is_global_zero:
            return
        out_dir = self.out_dir() / f"step_{result.step:06d}"
        for split in splits:
            clip = compose_clip([e for e in episodes if e.split == split], tile_size=self.tile_size)
            path = out_dir / f"{split}.gif"
            gif = write_gif(clip, path, self.fps)
            self.written.append(path)
            if self.tensorboard:
                for logger in trainer.loggers:
                    log_video(logger, f"eval_video/{split}", clip, gif, result.step, self.fps)
