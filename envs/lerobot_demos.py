"""Writes demos as a LeRobotDataset v3.0 directory: parquet rows, one MP4 per camera, ``meta/``.

The layout is LeRobot's (``huggingface/lerobot``, ``CODEBASE_VERSION = "v3.0"``), followed from
``src/lerobot/datasets/utils.py`` (path templates, ``DatasetInfo``), ``utils/constants.py``
(``DEFAULT_FEATURES``), ``datasets/feature_utils.py`` (``get_hf_features_from_features``: a ``(n,)``
feature is a fixed-size list column, ``(1,)`` a scalar), ``datasets/dataset_metadata.py`` (tasks table,
episode rows), ``datasets/dataset_writer.py`` (episode columns, several episodes back to back in one
MP4 with ``from_timestamp``/``to_timestamp``), ``docs/source/lerobot-dataset-v3.mdx`` and
``docs/source/video_encoding_parameters.mdx`` (``features[<video>].info``)::

    meta/info.json                               codebase_version "v3.0", fps, features, path templates
    meta/stats.json                              min/max/mean/std/count (+ q01..q99 of vectors)
    meta/tasks.parquet                           index "task" (the instruction) -> task_index
    meta/episodes/chunk-000/file-000.parquet     one row per episode: length, tasks, row and video spans
    data/chunk-000/file-000.parquet              one row per control step
    videos/<camera key>/chunk-000/file-000.mp4   one stream per camera, every episode back to back

Everything goes to file 000 of chunk 000 (LeRobot starts a new file past 100 MB of rows or 200 MB
of video; readers follow ``meta/episodes``, so one file is a valid dataset). Besides LeRobot's own
columns the rows carry ``init_state_id`` (the suite's initial state of the episode) and the
robomimic-style ``next.reward``/``next.done``. Needs ``pyarrow``, ``pandas`` and ``av`` (``pip install -e
'.[lerobot]'``); imports nothing else of ours but :class:`~vla_grpo.envs.demos.Demo`'s shape.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

CODEBASE_VERSION = "v3.0"
CHUNK_FILE = "chunk-{chunk_index:03d}/file-{file_index:03d}"
DATA_PATH = "data/" + CHUNK_FILE + ".parquet"
VIDEO_PATH = "videos/{video_key}/" + CHUNK_FILE + ".mp4"
EPISODES_PATH = "meta/episodes/" + CHUNK_FILE + ".parquet"
#: our keys in LeRobot's names (LIBERO's hub datasets use ``observation.images.image`` / ``wrist_image``)
IMAGE_KEY = "observation.images.agentview"
WRIST_KEY = "observation.images.eye_in_hand"
STATE_KEY = "observation.state"
ACTION_KEY = "action"
QUANTILES = (0.01, 0.10, 0.50, 0.90, 0.99)  # lerobot compute_stats.DEFAULT_QUANTILES


class VideoStream:
    """One camera's MP4, frames appended episode after episode (pts = frame number, time base 1/fps).

    Args:
        path: the ``.mp4`` to write.
        fps: frames per second (the suite's control rate).
        codec: an FFmpeg encoder PyAV has: ``libx264`` (h264, the default), ``libsvtav1`` (LeRobot's
            default), ``libx264rgb`` (lossless RGB).
        pix_fmt: ``yuv420p`` plays everywhere; ``yuv444p`` keeps full-resolution colour.
        crf: quality, lower is better (0: lossless in x264's own colour space).
    """

    def __init__(self, path: Path, fps: int, codec: str = "libx264", pix_fmt: str = "yuv420p",
                 crf: int = 18) -> None:
        import av

        path.parent.mkdir(parents=True, exist_ok=True)
        self.container = av.open(str(path), "w")
        self.stream = self.container.add_stream(codec, rate=fps)
        self.stream.pix_fmt = pix_fmt
        # g=2: a key frame every 2 frames, LeRobot's default (fast random access when training samples)
        self.stream.options = {"crf": str(crf), "g": "2"}
        self.frames = 0
        self.sum = np.zeros(3)
        self.sumsq = np.zeros(3)
        self.min, self.max = np.full(3, 255), np.zeros(3, dtype=np.int64)

    def add(self, frames: np.ndarray) -> None:
        """Append uint8 ``[T, H, W, 3]`` frames."""
        import av

        if self.frames == 0:
            self.stream.height, self.stream.width = frames.shape[1:3]
        for frame in frames:
            picture = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
            picture.pts = self.frames
            self.container.mux(self.stream.encode(picture))
            self.frames += 1
        pixels = frames.reshape(-1, 3).astype(np.float64)
        self.sum += pixels.sum(0)
        self.sumsq += (pixels**2).sum(0)
        self.min, self.max = np.minimum(self.min, frames.min((0, 1, 2))), np.maximum(self.max, frames.max((0, 1, 2)))

    def close(self) -> dict:
        """Flush the encoder; LeRobot's image stats (channels ``[3, 1, 1]``, in ``[0, 1]``)."""
        self.container.mux(self.stream.encode())
        self.container.close()
        n = max(self.frames * self.stream.height * self.stream.width, 1)
        mean = self.sum / n
        std = np.sqrt(np.maximum(self.sumsq / n - mean**2, 0.0))
        as_chw = lambda v: (np.asarray(v, np.float64) / 255.0).reshape(3, 1, 1).tolist()  # noqa: E731
        return {"min": as_chw(self.min), "max": as_chw(self.max), "mean": as_chw(mean), "std": as_chw(std),
                "count": [self.frames]}


def _vector_stats(values: np.ndarray) -> dict:
    stats = {"min": values.min(0), "max": values.max(0), "mean": values.mean(0), "std": values.std(0)}
    stats |= {f"q{int(q * 100):02d}": np.quantile(values, q, axis=0) for q in QUANTILES}
    return {k: np.asarray(v, np.float64).tolist() for k, v in stats.items()} | {"count": [len(values)]}


class LeRobotWriter:
    """Writes :class:`~vla_grpo.envs.demos.Demo` objects, one episode each, as a LeRobotDataset v3.0 directory.

    Args:
        root: the dataset directory (created; must not hold a dataset already).
        fps: control steps per second.
        robot_type: ``info.json``'s ``robot_type`` (the suite name).
        video: :class:`VideoStream` options (``codec``, ``pix_fmt``, ``crf``).

    Example:
        >>> with LeRobotWriter("demos_lerobot", fps=50, robot_type="tabletop") as writer:
        ...     for demo in read_demos("demos.hdf5"):
        ...         writer.add(demo)
    """

    def __init__(self, root: str | Path, fps: int, robot_type: str | None = None, **video) -> None:
        self.root = Path(root)
        if (self.root / "meta" / "info.json").exists():
            raise FileExistsError(f"{self.root}: already holds a LeRobot dataset (meta/info.json); expected a new directory")
        self.fps, self.robot_type, self.video_options = int(fps), robot_type, video
        self.rows: dict[str, list[np.ndarray]] = {}
        self.episodes: list[dict] = []
        self.tasks: dict[str, int] = {}
        self.videos: dict[str, VideoStream] = {}
        self.shapes: dict[str, list[int]] = {}

    def __enter__(self) -> LeRobotWriter:
        return self

    def __exit__(self, kind, value, traceback) -> None:
        if kind is None:
            self.close()
        else:
            for stream in self.videos.values():
                stream.container.close()

    def add(self, demo) -> None:
        """Append one demo (an episode) to the rows, the videos and the episode table."""
        T, start = len(demo), sum(e["length"] for e in self.episodes)
        task_index = self.tasks.setdefault(demo.instruction, len(self.tasks))
        columns = {STATE_KEY: demo.states.astype(np.float32), ACTION_KEY: demo.actions.astype(np.float32),
                   "next.reward": demo.rewards.astype(np.float32), "next.done": demo.dones.astype(bool),
                   "timestamp": (np.arange(T) / self.fps).astype(np.float32), "frame_index": np.arange(T),
                   "episode_index": np.full(T, len(self.episodes)), "index": start + np.arange(T),
                   "task_index": np.full(T, task_index), "init_state_id": np.full(T, demo.init_state_id)}
        for key, value in columns.items():
            self.rows.setdefault(key, []).append(value)
        episode = {"episode_index": len(self.episodes), "tasks": [demo.instruction], "length": T,
                   "data/chunk_index": 0, "data/file_index": 0,
                   "dataset_from_index": start, "dataset_to_index": start + T}
        cameras = {IMAGE_KEY: demo.images} | ({WRIST_KEY: demo.wrist_images} if demo.wrist_images is not None else {})
        for key, frames in cameras.items():
            if key not in self.videos:
                path = self.root / VIDEO_PATH.format(video_key=key, chunk_index=0, file_index=0)
                self.videos[key] = VideoStream(path, self.fps, **self.video_options)
                self.shapes[key] = list(frames.shape[1:])
            stream = self.videos[key]
            episode |= {f"videos/{key}/chunk_index": 0, f"videos/{key}/file_index": 0,
                        f"videos/{key}/from_timestamp": stream.frames / self.fps,
                        f"videos/{key}/to_timestamp": (stream.frames + T) / self.fps}
            stream.add(frames)
        self.episodes.append(episode | {"meta/episodes/chunk_index": 0, "meta/episodes/file_index": 0})

    def close(self) -> dict[str, int]:
        """Write the parquet tables and ``meta/``; ``{"episodes": ..., "frames": ...}``."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        if not self.episodes:
            raise ValueError(f"{self.root}: no demos to write; expected at least one episode")
        columns = {key: np.concatenate(parts) for key, parts in self.rows.items()}
        image_stats = {key: stream.close() for key, stream in self.videos.items()}
        table = pa.table({key: _arrow_column(value) for key, value in columns.items()})
        for relative, tab in ((DATA_PATH, table), (EPISODES_PATH, pa.Table.from_pylist(self.episodes))):
            path = self.root / relative.format(chunk_index=0, file_index=0)
            path.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(tab, path)
        import pandas as pd

        # LeRobot's own write (dataset_metadata.save_episode_tasks): the instruction is the index
        tasks = pd.DataFrame({"task_index": list(self.tasks.values())}, index=pd.Index(list(self.tasks), name="task"))
        tasks.to_parquet(self.root / "meta" / "tasks.parquet")
        stats = {key: _vector_stats(columns[key].astype(np.float64)) for key in (STATE_KEY, ACTION_KEY)}
        (self.root / "meta" / "stats.json").write_text(json.dumps(stats | image_stats, indent=2))
        info = self._info(columns)
        (self.root / "meta" / "info.json").write_text(json.dumps(info, indent=4))
        return {"episodes": info["total_episodes"], "frames": info["total_frames"]}

    def _info(self, columns: dict[str, np.ndarray]) -> dict:
        features = {key: {"dtype": "video", "shape": shape, "names": ["height", "width", "channels"],
                          "info": self._video_info(key, shape)} for key, shape in self.shapes.items()}
        for key, value in columns.items():
            dtype = "bool" if value.dtype == bool else str(value.dtype)
            features[key] = {"dtype": dtype, "shape": list(value.shape[1:]) or [1], "names": None}
        n = len(self.episodes)
        return {"codebase_version": CODEBASE_VERSION, "robot_type": self.robot_type, "total_episodes": n,
                "total_frames": int(sum(e["length"] for e in self.episodes)), "total_tasks": len(self.tasks),
                "chunks_size": 1000, "data_files_size_in_mb": 100, "video_files_size_in_mb": 200,
                "fps": self.fps, "splits": {"train": f"0:{n}"}, "data_path": DATA_PATH,
                "video_path": VIDEO_PATH if self.videos else None, "features": features}

    def _video_info(self, key: str, shape: list[int]) -> dict:
        stream = self.videos[key].stream
        return {"video.height": shape[0], "video.width": shape[1], "video.codec": stream.codec_context.codec.canonical_name,
                "video.pix_fmt": stream.pix_fmt, "is_depth_map": False, "video.fps": self.fps,
                "video.channels": 3, "has_audio": False,
                "video.crf": int(self.video_options.get("crf", 18)), "video.g": 2}


def _arrow_column(value: np.ndarray):
    """A ``(n,)`` feature as a fixed-size list column (LeRobot's ``Sequence(length=n)``), else a scalar."""
    import pyarrow as pa

    if value.ndim == 1:
        return pa.array(value)
    flat = pa.array(np.ascontiguousarray(value).reshape(-1))
    return pa.FixedSizeListArray.from_arrays(flat, value.shape[1])


__all__ = ["ACTION_KEY", "CODEBASE_VERSION", "IMAGE_KEY", "STATE_KEY", "WRIST_KEY", "LeRobotWriter", "VideoStream"]
