"""Scripted demonstrations in the LIBERO / robomimic HDF5 layout, and the `demos` command (HDF5 or LeRobot).

Layout written by :func:`write_demos` (one control step per row, the
observation *before* the action, like robomimic)::

    data/                     attrs: total, env_args (JSON: suite, image size, ...)
      demo_<i>/               attrs: num_samples, instruction, task_name, task_index,
                                     init_state_id, split, family
        actions               float32 [T, A]     control-step resolution (not chunked); A = 7, 14 bimanual
        obs/agentview_image   uint8   [T, S, S, 3] (HWC, like robomimic)
        obs/eye_in_hand_image uint8   [T, S, S, 3] (only with a wrist camera)
        obs/state             float32 [T, state_dim]
        rewards               float32 [T]        1 on the step that succeeds
        dones                 uint8   [T]        1 on the last step

Command line (also reached as ``python -m vla_grpo demos ...``)::

    python -m vla_grpo.envs.demos --out demos.hdf5 --tasks train --per-task 1
    python -m vla_grpo.envs.demos --out spatial.hdf5 --tasks spatial/behind_plate,spatial/left_side --per-task 5
    python -m vla_grpo.envs.demos --suite bimanual --out bimanual.hdf5 --tasks train --per-task 2 --image-size 64
    python -m vla_grpo.envs.demos --suite libero_spatial --out spatial.hdf5 --per-task 1   # pip install -e '.[libero]'
    python -m vla_grpo demos --out demos_lerobot --format lerobot --tasks train --per-task 1  # pip install -e '.[lerobot]'
    python -m vla_grpo demos --out demos_lerobot --format lerobot --from demos.hdf5          # convert a demo file

``--format lerobot`` writes a LeRobotDataset v3.0 directory instead (:mod:`.lerobot_demos`).

Demos use the task's initial states ``first_state, first_state + 1, ...`` and
skip (and report) the rare state where the expert fails.
"""
from __future__ import annotations

import argparse
import json
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import torch
from tensordict import TensorDict

from .base import Suite

IMAGE = "obs/agentview_image"
WRIST_IMAGE = "obs/eye_in_hand_image"
STATE = "obs/state"
_DEMO_ATTRS = ("instruction", "task_name", "task_index", "init_state_id")
#: LIBERO suites with scripted experts (vla_grpo.envs.libero; LIBERO itself is imported only when picked)
LIBERO_SUITES = ("libero_spatial", "libero_object", "libero_goal", "libero_10")


@dataclass
class Demo:
    """One demonstration read back from a file (arrays are length ``T``)."""

    actions: np.ndarray
    images: np.ndarray
    states: np.ndarray
    rewards: np.ndarray
    dones: np.ndarray
    instruction: str
    task_name: str
    task_index: int
    init_state_id: int
    wrist_images: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.actions)


# -- writing ---------------------------------------------------------------
def resolve_tasks(suite: Suite, tasks: str | Sequence[str | int]) -> list[int]:
    """Task indices from a split name, ``"all"``, comma-separated names, or a list of names/indices."""
    names = [t.name for t in suite.all_tasks()]
    if isinstance(tasks, str):
        if tasks == "all":
            return list(range(len(names)))
        if tasks in suite.splits:
            return [names.index(t.name) for t in suite.tasks(tasks)]
        tasks = [t.strip() for t in tasks.split(",") if t.strip()]
    out = []
    for t in tasks:
        if isinstance(t, int) or (isinstance(t, str) and t.isdigit()):
            out.append(int(t))
        elif t in names:
            out.append(names.index(t))
        else:
            raise DemoFileError(f"unknown task {t!r}; expected a split {suite.splits}, 'all', or task names like {names[0]!r}")
    return out


def record_episode(env, task_index: int, init_state_id: int) -> dict[str, np.ndarray] | None:
    """Run the suite's expert on a 1-env, chunk-1 env; the episode's arrays, or None if it failed."""
    prompt = TensorDict(
        {"task_index": torch.tensor([[task_index]]), "init_state_id": torch.tensor([[init_state_id]]),
         "group_id": torch.zeros(1, 1, dtype=torch.int64)},
        batch_size=[1],
    )
    td = env.reset(prompt)
    rows: dict[str, list] = {"actions": [], "images": [], "wrist": [], "states": [], "rewards": [], "dones": []}
    while True:
        rows["images"].append(td["observation", "image"][0].permute(1, 2, 0).numpy())
        if ("observation", "wrist_image") in td.keys(True):
            rows["wrist"].append(td["observation", "wrist_image"][0].permute(1, 2, 0).numpy())
        rows["states"].append(td["observation", "state"][0].numpy())
        td["action"] = env.expert_chunk()
        nxt = env.step(td)["next"]
        rows["actions"].append(td["action"][0, 0].numpy())
        rows["rewards"].append(float(nxt["reward"][0]))
        rows["dones"].append(int(nxt["done"][0]))
        if nxt["done"][0]:
            break
        td = nxt
    if not bool(nxt["success"][0]):
        return None
    return {k: np.stack(v) for k, v in rows.items() if v}


def _write_demo(group: h5py.Group, demo: Demo, attrs: dict) -> None:
    img = {"compression": "gzip", "compression_opts": 4, "chunks": (1, *demo.images.shape[1:])}
    group.create_dataset("actions", data=demo.actions.astype(np.float32))
    group.create_dataset(IMAGE, data=demo.images.astype(np.uint8), **img)
    if demo.wrist_images is not None:
        group.create_dataset(WRIST_IMAGE, data=demo.wrist_images.astype(np.uint8), **img)
    group.create_dataset(STATE, data=demo.states.astype(np.float32))
    group.create_dataset("rewards", data=demo.rewards.astype(np.float32))
    group.create_dataset("dones", data=demo.dones.astype(np.uint8))
    group.attrs["num_samples"] = len(demo)
    for key, value in attrs.items():
        group.attrs[key] = value


def expert_demos(
    suite: Suite,
    tasks: str | Sequence[str | int] = "train",
    per_task: int = 1,
    *,
    first_state: int = 0,
    progress: bool = True,
    counts: dict[str, int] | None = None,
) -> Iterator[Demo]:
    """``per_task`` successful expert demos of each task, recorded one at a time (arguments: :func:`write_demos`).

    ``counts``, when given, is updated to ``{"demos": written, "skipped": expert failures skipped}``.
    """
    from tqdm.auto import tqdm

    counts = {} if counts is None else counts
    counts.update(demos=0, skipped=0)
    indices = resolve_tasks(suite, tasks)
    specs = suite.all_tasks()
    env = suite.make_env(1, chunk_size=1)
    bar = tqdm(total=len(indices) * per_task, desc="demos", unit="demo", disable=not progress)
    try:
        for t in indices:
            state, done = first_state, 0
            while done < per_task and state < specs[t].num_init_states:
                ep = record_episode(env, t, state)
                state += 1
                if ep is None:
                    counts["skipped"] += 1
                    continue
                yield Demo(ep["actions"], ep["images"], ep["states"], ep["rewards"], ep["dones"],
                           specs[t].instruction, specs[t].name, t, state - 1, ep.get("wrist"))
                counts["demos"], done = counts["demos"] + 1, done + 1
                bar.update(1)
    finally:
        bar.close()
        env.close()


def write_demos(
    suite: Suite,
    path: str | Path,
    tasks: str | Sequence[str | int] = "train",
    per_task: int = 1,
    *,
    first_state: int = 0,
    progress: bool = True,
) -> dict[str, int]:
    """Write ``per_task`` successful expert demos of each task to an HDF5 file.

    Args:
        suite: a suite with scripted experts (``env.expert_chunk()``), e.g. ``TabletopSuite``.
        path: output ``.hdf5`` file (overwritten).
        tasks: a split name, ``"all"``, comma-separated task names, or names/indices.
        per_task: demos per task.
        first_state: first initial-state id to use; later ids replace expert failures.
        progress: show a progress bar.

    Returns:
        ``{"demos": written, "skipped": expert failures skipped}``.
    """
    counts: dict[str, int] = {}
    write_demo_file(suite, path, expert_demos(suite, tasks, per_task, first_state=first_state, progress=progress,
                                              counts=counts))
    return counts


def write_demo_file(suite: Suite, path: str | Path, demos: Iterable[Demo]) -> None:
    """Write ``demos`` (of ``suite``'s tasks) to an HDF5 file in the layout above (overwritten)."""
    specs = suite.all_tasks()
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        for i, demo in enumerate(demos):
            spec = specs[demo.task_index]
            attrs = {"instruction": demo.instruction, "task_name": demo.task_name, "task_index": demo.task_index,
                     "init_state_id": demo.init_state_id, "split": spec.split, "family": spec.family}
            _write_demo(data.create_group(f"demo_{i}"), demo, attrs)
        data.attrs["total"] = sum(int(data[k].attrs["num_samples"]) for k in data)
        data.attrs["env_args"] = json.dumps({"env_name": suite.name, "image_size": suite.image_size,
                                             "state_dim": suite.state_dim, "action_dim": suite.action_dim})


def task_demo_path(directory: str | Path, suite: Suite, task_index: int) -> Path:
    """Where a per-task demo directory keeps task ``task_index``'s demos: ``<directory>/<task name>.hdf5``."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "+", suite.all_tasks()[task_index].name)
    return Path(directory) / f"{name}.hdf5"


def write_task_file(suite: Suite, directory: str | Path, task_index: int, demos: Iterable[Demo]) -> Path:
    """Write one task's ``demos`` to :func:`task_demo_path`; the file appears under its name only once
    complete (a stopped run leaves no half file), so a directory of them is a cache a rerun completes
    task by task."""
    path = task_demo_path(directory, suite, task_index)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.partial.hdf5")
    write_demo_file(suite, tmp, demos)
    tmp.replace(path)
    return path


def write_task_demos(suite: Suite, directory: str | Path, task_index: int, per_task: int,
                     first_state: int = 0) -> dict[str, int]:
    """Write one task's ``per_task`` expert demos with :func:`write_task_file` (fewer if its states run out)."""
    counts: dict[str, int] = {}
    write_task_file(suite, directory, task_index, expert_demos(suite, [task_index], per_task, first_state=first_state,
                                                               progress=False, counts=counts))
    return counts


# -- reading ---------------------------------------------------------------
class DemoFileError(ValueError):
    """A demo file that can't be used, in one line naming the file, the field and what was expected.

    Raised while a run is set up (after the config was parsed), so the CLI turns
    it into an ``error:`` line and exit code 2 rather than a traceback.
    """


def _bad(path, field: str, expected: str, got: str) -> DemoFileError:
    return DemoFileError(f"{path}: bad demo file: {field} {got}; expected {expected}")


def _array(path, group: h5py.Group, name: str, ndim: int, dtype=None) -> np.ndarray:
    where = f"{group.name.lstrip('/')}/{name}"
    if name not in group or not isinstance(group[name], h5py.Dataset):
        raise _bad(path, where, f"a dataset with {ndim} dims", "is missing")
    try:
        arr = group[name][()]
    except (OSError, KeyError, RuntimeError) as err:  # truncated or corrupt chunks
        raise _bad(path, where, "readable data", f"is unreadable ({' '.join(str(err).split())})") from None
    if arr.ndim != ndim or (dtype is not None and arr.dtype != dtype):
        raise _bad(path, where, f"{ndim} dims" + (f" of {np.dtype(dtype)}" if dtype else ""), f"has shape {arr.shape} {arr.dtype}")
    return arr


def _read_demo(path, group: h5py.Group) -> Demo:
    actions = _array(path, group, "actions", 2)
    images = _array(path, group, IMAGE, 4, np.uint8)
    states = _array(path, group, STATE, 2)
    rewards = _array(path, group, "rewards", 1)
    dones = _array(path, group, "dones", 1)
    wrist = _array(path, group, WRIST_IMAGE, 4, np.uint8) if WRIST_IMAGE in group else None
    name = group.name.lstrip("/")
    length = len(actions)
    for field, arr in (("actions", actions), (IMAGE, images), (STATE, states), ("rewards", rewards), ("dones", dones)):
        if len(arr) != length or length == 0:
            raise _bad(path, f"{name}/{field}", f"{length} > 0 rows like {name}/actions", f"has {len(arr)} rows")
    if images.shape[-1] != 3:
        raise _bad(path, f"{name}/{IMAGE}", "HWC frames [T, H, W, 3]", f"has shape {images.shape}")
    missing = [a for a in _DEMO_ATTRS if a not in group.attrs]
    if missing:
        raise _bad(path, f"{name} attrs", f"attrs {list(_DEMO_ATTRS)}", f"lack {missing}")
    a = group.attrs
    return Demo(actions.astype(np.float32), images, states.astype(np.float32), rewards, dones, str(a["instruction"]),
                str(a["task_name"]), int(a["task_index"]), int(a["init_state_id"]), wrist)


def read_demos(path: str | Path) -> list[Demo]:
    """Read and validate a demo file; a one-line ``ValueError`` names the bad field.

    Raises:
        ValueError: the file is missing, truncated, not HDF5, or not in the layout above.
    """
    try:
        f = h5py.File(path, "r")
    except (OSError, ValueError) as err:
        reason = " ".join(str(err).split())
        raise DemoFileError(f"{path}: cannot open as HDF5 ({reason}); expected a demo file from vla_grpo.envs.demos") from None
    with f:
        if "data" not in f or not isinstance(f["data"], h5py.Group):
            raise _bad(path, "group 'data'", "the robomimic layout data/demo_<i>/...", "is missing")
        keys = sorted((k for k in f["data"] if k.startswith("demo_")), key=lambda k: int(k.split("_")[1]))
        if not keys:
            raise _bad(path, "data/", "groups data/demo_<i>", "holds none")
        return [_read_demo(path, f["data"][k]) for k in keys]


# -- command line ----------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vla_grpo demos",
                                     description="Write scripted demos (robomimic HDF5, or a LeRobotDataset v3.0 directory).")
    parser.add_argument("--out", required=True, help="output .hdf5 file, or directory with --format lerobot")
    parser.add_argument("--format", default="hdf5", choices=("hdf5", "lerobot"),
                        help="hdf5: robomimic layout; lerobot: LeRobotDataset v3.0 (pip install -e '.[lerobot]')")
    parser.add_argument("--from", dest="source", default=None, metavar="HDF5",
                        help="with --format lerobot: convert this demo file instead of running the experts")
    parser.add_argument("--suite", default="tabletop", choices=("tabletop", "bimanual") + LIBERO_SUITES,
                        help="built-in suite, or a LIBERO suite (its LIBERO-PRO variants as splits)")
    parser.add_argument("--tasks", default="train", help="split name, 'all', or comma-separated task names")
    parser.add_argument("--per-task", type=int, default=1, help="demos per task")
    parser.add_argument("--first-state", type=int, default=0, help="first initial-state id")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--wrist-camera", action="store_true")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    video = parser.add_argument_group("--format lerobot: the MP4s (docs/data.md measures the frame error)")
    video.add_argument("--fps", type=int, default=None, help="frames per second (default: the suite's control rate)")
    video.add_argument("--video-codec", default="libx264", help="FFmpeg encoder: libx264, libsvtav1, libx264rgb")
    video.add_argument("--pix-fmt", default="yuv420p", help="yuv420p (plays everywhere) or yuv444p (full colour)")
    video.add_argument("--crf", type=int, default=18, help="quality, lower is better (0: lossless)")
    return parser


def _suite(args, parser) -> Suite:
    if args.suite in LIBERO_SUITES:
        from .libero import LiberoSuite

        try:
            return LiberoSuite(args.suite, image_size=args.image_size, wrist_camera=args.wrist_camera)
        except ImportError as err:
            parser.error(str(err))
    if args.suite == "bimanual":
        if args.wrist_camera:
            parser.error("--wrist-camera: the bimanual suite has one agent-view camera")
        from .bimanual import BimanualSuite

        return BimanualSuite(image_size=args.image_size)
    from .tabletop import TabletopSuite

    return TabletopSuite(image_size=args.image_size, wrist_camera=args.wrist_camera)


def _write_lerobot(suite: Suite, args) -> dict[str, int]:
    from .lerobot_demos import LeRobotWriter
    from .scene.mjcf import TIMESTEP
    from .scene.sim import SUBSTEPS

    # the built-in suites step at 50 Hz (two 10 ms substeps); LIBERO's robosuite control_freq is 20 Hz
    fps = args.fps or (20 if args.suite in LIBERO_SUITES else round(1 / (TIMESTEP * SUBSTEPS)))
    counts: dict[str, int] = {"skipped": 0}
    demos = read_demos(args.source) if args.source else expert_demos(
        suite, args.tasks, args.per_task, first_state=args.first_state, progress=not args.quiet, counts=counts)
    with LeRobotWriter(args.out, fps, suite.name, codec=args.video_codec, pix_fmt=args.pix_fmt,
                       crf=args.crf) as writer:
        for demo in demos:
            writer.add(demo)
    counts["demos"] = len(writer.episodes)
    return counts


def main(argv: list[str] | None = None) -> int:
    """Write expert demos of a built-in suite (see the module docstring)."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.per_task < 1:
        parser.error(f"--per-task must be >= 1 (got {args.per_task})")
    if args.source and args.format != "lerobot":
        parser.error("--from converts an HDF5 demo file to --format lerobot")
    if args.format == "lerobot":
        try:
            import av  # noqa: F401
            import pandas  # noqa: F401
            import pyarrow  # noqa: F401
        except ImportError as err:
            parser.error(f"--format lerobot needs the lerobot extra ({err.name or err}): pip install -e '.[lerobot]'")
    suite = _suite(args, parser)
    try:
        if args.format == "lerobot":
            summary = _write_lerobot(suite, args)
        else:
            summary = write_demos(suite, args.out, args.tasks, args.per_task, first_state=args.first_state,
                                  progress=not args.quiet)
    except (ValueError, FileExistsError) as err:
        parser.error(str(err))
    print(f"wrote {summary['demos']} demos to {args.out} ({summary['skipped']} expert failures skipped)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
