"""Videos of a few greedy eval episodes per split (``EvalVideo``): MP4 with the ``[video]`` extra, else GIF.

After each :class:`~vla_grpo.callbacks.SplitEvaluation` evaluation, rank 0
re-runs the first ``episodes_per_split`` greedy episodes of every split (greedy
rollouts are deterministic, so they are the evaluated episodes) and writes one
video per split, the episodes side by side: each tile is captioned with its
task, framed grey while the episode runs and green (success) or red (failure)
from its last step on. MP4 (H.264, yuv420p) when PyAV or imageio-ffmpeg is
installed (``pip install -e '.[video]'``), else an animated GIF: neither encoder
is in the default install. The clip goes to every logger
(:mod:`vla_grpo.callbacks.sinks`): TensorBoard, which shows videos as GIFs
(``add_video`` when moviepy is installed, else the encoded GIF as an image
summary, which is what ``add_video`` writes), W&B and MLflow (the file).
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import numpy as np

from vla_grpo.envs.base import Suite
from vla_grpo.envs.scene.evaluate import SplitResult, task_label
from vla_grpo.evaluation import EvalItem, run_greedy
from vla_grpo.prompts import Prompt
from vla_grpo.sharding import is_sharded

from . import sinks
from .sinks import TENSORBOARD
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


def encode_gif(clip: np.ndarray, fps: float) -> bytes:
    """``clip`` as a looping GIF's bytes."""
    import imageio.v3 as iio

    return iio.imwrite("<bytes>", clip, extension=".gif", duration=1000.0 / fps, loop=0)


def write_gif(clip: np.ndarray, path: Path, fps: float) -> bytes:
    """Writes ``clip`` as a looping GIF at ``path``; returns its bytes."""
    data = encode_gif(clip, fps)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return data


def mp4_encoder() -> str | None:
    """The MP4 encoder installed here: ``"pyav"`` (the ``av`` package), ``"ffmpeg"`` (``imageio-ffmpeg``), or None."""
    if importlib.util.find_spec("av") is not None:
        return "pyav"
    if importlib.util.find_spec("imageio_ffmpeg") is not None:
        return "ffmpeg"
    return None


def _even(clip: np.ndarray) -> np.ndarray:
    """``clip`` padded (black) to an even height and width: H.264's yuv420p needs both even."""
    h, w = clip.shape[1:3]
    return np.pad(clip, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)))


def write_mp4(clip: np.ndarray, path: Path, fps: float, *, encoder: str | None = None, crf: int = 18) -> None:
    """Writes ``clip`` ``[T, H, W, 3]`` uint8 as an H.264 MP4 (yuv420p: what browsers and players open).

    Odd sides are padded by one black pixel. ``encoder``: ``"pyav"`` or
    ``"ffmpeg"`` (default: :func:`mp4_encoder`'s pick); ``crf``: x264's quality
    (0 lossless, 18 visually lossless, 23 its default).
    """
    encoder = encoder or mp4_encoder()
    if encoder is None:
        raise ImportError("writing MP4 needs PyAV or imageio-ffmpeg: pip install -e '.[video]'")
    clip = _even(np.ascontiguousarray(clip, dtype=np.uint8))
    path.parent.mkdir(parents=True, exist_ok=True)
    if encoder == "pyav":
        _write_mp4_pyav(clip, path, fps, crf)
    else:
        import imageio_ffmpeg

        writer = imageio_ffmpeg.write_frames(str(path), (clip.shape[2], clip.shape[1]), fps=fps, codec="libx264",
                                             pix_fmt_out="yuv420p", macro_block_size=1,
                                             output_params=["-crf", str(crf)])
        writer.send(None)  # start the ffmpeg process
        for frame in clip:
            writer.send(frame)
        writer.close()


def _write_mp4_pyav(clip: np.ndarray, path: Path, fps: float, crf: int) -> None:
    from fractions import Fraction

    import av

    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1000))
        stream.height, stream.width = clip.shape[1:3]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": str(crf)}
        for frame in clip:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())  # flush the encoder


FORMATS = ("auto", "mp4", "gif")


class EvalVideo(SplitEvalListener):
    """A video per split of a few greedy eval episodes, after each evaluation.

    Files go to ``<dirpath>/step_<step>/<split>.mp4`` (or ``.gif``; default dir
    ``<run dir>/eval/videos``) and to every logger as ``eval_video/<split>``
    (:mod:`vla_grpo.callbacks.sinks`: TensorBoard as a video, W&B as a
    ``wandb.Video``, MLflow as an artifact under ``eval/videos/step_<step>/``).

    Args:
        episodes_per_split: episodes shown per split (tasks first, then more states).
        splits: splits to film (``None``: every split the evaluation covered).
        every_n_evals: film every this many evaluations (validate/test always).
        fps: frames (policy decisions) per second.
        tile_size: approximate pixel side of one episode's tile (images are upscaled).
        dirpath: where the videos go.
        tensorboard: also send the clips to the loggers (TensorBoard, W&B, MLflow).
        format: ``"mp4"`` (needs the ``[video]`` extra: PyAV or imageio-ffmpeg),
            ``"gif"``, or ``"auto"``: MP4 when an encoder is installed, else GIF.
    """

    default_subdir = "eval/videos"

    def __init__(self, episodes_per_split: int = 4, splits: list[str] | None = None, every_n_evals: int = 1,
                 fps: float = 4.0, tile_size: int = 128, dirpath: str | None = None,
                 tensorboard: bool = True, format: str = "auto") -> None:
        if episodes_per_split < 1:
            raise ValueError(f"`EvalVideo.episodes_per_split` must be >= 1 (got {episodes_per_split})")
        if every_n_evals < 1:
            raise ValueError(f"`EvalVideo.every_n_evals` must be >= 1 (got {every_n_evals})")
        if format not in FORMATS:
            raise ValueError(f"`EvalVideo.format` must be one of {list(FORMATS)} (got {format!r})")
        if format == "mp4" and mp4_encoder() is None:
            raise ValueError("`EvalVideo.format='mp4'` needs PyAV or imageio-ffmpeg: pip install -e '.[video]' "
                             "(or format: auto, which falls back to GIF)")
        self.episodes_per_split = episodes_per_split
        self.splits = list(splits) if splits else None
        self.every_n_evals = every_n_evals
        self.fps = fps
        self.tile_size = tile_size
        self.dirpath = dirpath
        self.tensorboard = tensorboard
        self.format = format
        self.written: list[Path] = []
        self._evals = 0

    @property
    def suffix(self) -> str:
        """The file suffix the videos get: ``.mp4`` or ``.gif``."""
        return ".gif" if self.format == "gif" or mp4_encoder() is None else ".mp4"

    def write(self, clip: np.ndarray, path: Path) -> None:
        """``clip`` as a video at ``path`` (its suffix picks MP4 or GIF)."""
        if path.suffix == ".mp4":
            write_mp4(clip, path, self.fps)
        else:
            write_gif(clip, path, self.fps)

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
        step_dir = f"step_{result.step:06d}"
        loggers = trainer.loggers if self.tensorboard else []
        for split in splits:
            clip = compose_clip([e for e in episodes if e.split == split], tile_size=self.tile_size)
            path = self.out_dir() / step_dir / f"{split}{self.suffix}"
            self.write(clip, path)
            self.written.append(path)
            # TensorBoard shows videos as GIFs: encode one for it when the file is an MP4
            gif = None
            if TENSORBOARD in sinks.kinds(loggers):
                gif = path.read_bytes() if path.suffix == ".gif" else encode_gif(clip, self.fps)
            for logger in loggers:
                sinks.log_video(logger, f"eval_video/{split}", path, step=result.step, clip=clip, gif=gif,
                                fps=self.fps, folder=f"{self.default_subdir}/{step_dir}")
