"""Reads a local LeRobotDataset (v3.0) directory into demos, through TorchRL's ``LeRobotExperienceReplay``.

TorchRL 0.14.1's ``LeRobotExperienceReplay`` reads the on-disk LeRobot layout (``meta/info.json``, the
data parquet through ``datasets``, ``meta/tasks.parquet``, ``meta/episodes/``, video spans as lazy
``VideoClipRef`` frame addresses), but only from a Hugging Face hub snapshot: its private
``_LeRobotSnapshot`` asks ``huggingface_hub.snapshot_download(repo_id)`` for the root, and
``root=``/``download=False`` load only its own memory-mapped conversion. :func:`local_replay` answers
that one call with the local directory (nothing else of upstream's reading is replaced);
``tests/test_lerobot.py::test_upstream_cannot_read_a_local_directory`` fails the day upstream can,
and then this wrapper goes.

Frames are decoded here with PyAV from the ``VideoClipRef`` addresses (file, frame number):
upstream decodes through torchcodec, whose PyPI wheel links CUDA torch and a system FFmpeg and does
not load beside torch+cpu (``test_torchcodec_decodes_like_pyav`` compares the two where it loads).

The key mapping (``--data.lerobot_keys``) names the LeRobot features that play our roles: ``image``
(the agent-view camera), ``state``, ``action`` and optionally ``wrist``. Each task string of the
dataset must be an instruction (or a training phrasing) of the suite's tasks.
"""
from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from unittest import mock

import numpy as np

from vla_grpo.envs.base import Suite
from vla_grpo.envs.demos import Demo, DemoFileError

#: our roles -> LeRobot feature names, as ``vla_grpo demos --format lerobot`` writes them
DEFAULT_KEYS = {"image": "observation.images.agentview", "state": "observation.state", "action": "action"}
ROLES = ("image", "state", "action", "wrist")
#: every suite's action contract (envs/base.py: ``action_spec`` is ``Bounded(-1, 1)``)
ACTION_RANGE = (-1.0, 1.0)


def is_lerobot_dir(path: str | Path | None) -> bool:
    """Whether ``path`` is a LeRobot dataset directory (it holds ``meta/info.json``)."""
    return path is not None and (Path(path) / "meta" / "info.json").is_file()


def lerobot_keys(keys: dict[str, str] | None) -> dict[str, str]:
    """``DEFAULT_KEYS`` updated with ``keys``; a one-line error names an unknown role."""
    unknown = sorted(set(keys or {}) - set(ROLES))
    if unknown:
        raise ValueError(f"`--data.lerobot_keys` has unknown roles {unknown}; expected some of {list(ROLES)}")
    return DEFAULT_KEYS | dict(keys or {})


@contextmanager
def local_replay(root: Path, key_map: dict[str, str]) -> Iterator:
    """TorchRL's ``LeRobotExperienceReplay`` over the local directory ``root`` (see the module docstring).

    Its memory-mapped conversion goes to a temporary folder that lives as long as the context.
    """
    import datasets
    from torchrl.data.datasets import LeRobotExperienceReplay

    datasets.disable_progress_bars()
    with tempfile.TemporaryDirectory(prefix="vla_grpo_lerobot_") as cache, \
            mock.patch("huggingface_hub.snapshot_download", lambda repo_id, **kwargs: str(root)):
        yield LeRobotExperienceReplay(f"local/{root.name}", root=cache, download=True, decode_video=False,
                                      key_map=key_map)


def decode_frames(ref) -> np.ndarray:
    """uint8 ``[N, H, W, 3]`` frames of a ``VideoClipRef`` (its files decoded whole with PyAV)."""
    import av

    sources = ref.sources if isinstance(ref.sources, tuple) else tuple(ref.sources)
    file_id, frame_index = ref.file_id.numpy(), ref.frame_index.numpy()
    out = None
    for i in np.unique(file_id):
        with av.open(sources[i]) as container:
            frames = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
        rows = file_id == i
        if frame_index[rows].max() >= len(frames):
            raise DemoFileError(f"{sources[i]}: decodes to {len(frames)} frames; expected at least "
                                f"{frame_index[rows].max() + 1} (the episodes' lengths in meta/episodes)")
        if out is None:
            out = np.empty((len(file_id), *frames.shape[1:]), np.uint8)
        out[rows] = frames[frame_index[rows]]
    return out


def _feature(root: Path, features: dict, role: str, key: str, dtype: str, shape: list[int]) -> None:
    where = f"{root}/meta/info.json: features[{key!r}]"
    if key not in features:
        raise DemoFileError(f"{root}/meta/info.json: no feature {key!r} (`--data.lerobot_keys` {role}); "
                            f"expected one of {sorted(features)}")
    got = features[key]
    if got.get("dtype") != dtype and not (dtype == "float" and str(got.get("dtype")).startswith("float")):
        raise DemoFileError(f"{where}.dtype is {got.get('dtype')!r}; expected {dtype!r} for the {role}")
    if list(got.get("shape", [])) != shape:
        raise DemoFileError(f"{where}.shape is {list(got.get('shape', []))}; expected {shape} for the {role}")


def check_info(root: Path, suite: Suite, keys: dict[str, str]) -> dict:
    """``meta/info.json``, checked against the suite's camera, state and action sizes (one-line errors)."""
    try:
        info = json.loads((root / "meta" / "info.json").read_text())
    except (OSError, ValueError) as err:
        raise DemoFileError(f"{root}/meta/info.json: unreadable ({' '.join(str(err).split())}); "
                            "expected a LeRobotDataset's JSON") from None
    version = str(info.get("codebase_version", ""))
    if not version.startswith(("v2.", "v3.")):
        raise DemoFileError(f"{root}/meta/info.json: codebase_version is {version!r}; expected v2.x or v3.x")
    features = info.get("features", {})
    size = suite.image_size
    for role in ("image", "wrist"):
        if role in keys:
            _feature(root, features, role, keys[role], "video", [size, size, 3])
    _feature(root, features, "state", keys["state"], "float", [suite.state_dim])
    _feature(root, features, "action", keys["action"], "float", [suite.action_dim])
    return info


def _task_indices(root: Path, suite: Suite, instructions: list[str]) -> dict[str, int]:
    """Each task string -> the suite's task index (by instruction or training phrasing)."""
    known, held_out = {}, {}
    for i, spec in enumerate(suite.all_tasks()):
        for text in (spec.instruction, *spec.phrasings):
            known.setdefault(text, i)
        held_out |= dict.fromkeys(spec.held_out_phrasings, spec.name)
    out = {}
    for text in dict.fromkeys(instructions):
        if text in held_out:  # the paraphrase split asks these; they never reach SFT (DESIGN.md)
            raise DemoFileError(f"{root}/meta/tasks.parquet: task {text!r} is a held-out phrasing of "
                                f"{held_out[text]!r}; expected a training phrasing (held-out ones are only evaluated)")
        if text not in known:
            raise DemoFileError(f"{root}/meta/tasks.parquet: task {text!r} is not an instruction of the suite "
                                f"{suite.name!r}; expected e.g. {suite.all_tasks()[0].instruction!r}")
        out[text] = known[text]
    return out


def _check_actions(root: Path, key: str, actions: np.ndarray, episode: np.ndarray) -> None:
    lo, hi = ACTION_RANGE
    bad = ((actions < lo) | (actions > hi)).any(1)
    if bad.any():
        raise DemoFileError(f"{root}/data: column {key!r} spans [{actions.min():.4g}, {actions.max():.4g}] "
                            f"(first in episode {int(episode[bad][0])}); expected the suite's range [{lo:g}, {hi:g}]")


def read_lerobot(root: str | Path, suite: Suite, keys: dict[str, str] | None = None) -> list[Demo]:
    """The episodes of a local LeRobotDataset directory as :class:`~vla_grpo.envs.demos.Demo` objects.

    Args:
        root: the dataset directory (``meta/info.json``, ``data/``, ``videos/``).
        suite: the suite the demos are for (sizes, action range, task instructions).
        keys: role -> LeRobot feature (``image``, ``state``, ``action``, ``wrist``); see :data:`DEFAULT_KEYS`.

    Raises:
        DemoFileError: one line naming the file or field and what was expected.
    """
    root, keys = Path(root), lerobot_keys(keys)
    check_info(root, suite, keys)
    key_map = {feature: role for role, feature in keys.items()}
    with local_replay(root, key_map) as replay:
        data = replay[:]
        columns = {role: data.get(role) for role in ("state", "action", "episode")}
        columns = {role: value.numpy().copy() for role, value in columns.items()}
        frames = {role: decode_frames(data.get(role)) for role in ("image", "wrist") if role in keys}
        instructions = data.get("language_instruction").tolist()
        optional = {name: data.get(name).reshape(len(data), -1)[:, 0].numpy().copy()
                    for name in (("next", "reward"), ("next", "done"), "init_state_id") if name in data.keys(True)}
    _check_actions(root, keys["action"], columns["action"], columns["episode"])
    tasks = _task_indices(root, suite, instructions)
    specs = suite.all_tasks()
    demos = []
    for episode in np.unique(columns["episode"]):
        rows = np.flatnonzero(columns["episode"] == episode)
        last = np.eye(len(rows), dtype=np.float32)[-1]  # a dataset without rewards/dones: success at the end
        text = instructions[rows[0]]
        demos.append(Demo(
            actions=columns["action"][rows].astype(np.float32), images=frames["image"][rows],
            states=columns["state"][rows].astype(np.float32),
            rewards=optional[("next", "reward")][rows].astype(np.float32) if ("next", "reward") in optional else last,
            dones=(optional[("next", "done")][rows] if ("next", "done") in optional else last).astype(np.uint8),
            instruction=text, task_name=specs[tasks[text]].name, task_index=tasks[text],
            init_state_id=int(optional["init_state_id"][rows[0]]) if "init_state_id" in optional else -1,
            wrist_images=frames["wrist"][rows] if "wrist" in frames else None))
    return demos


__all__ = ["ACTION_RANGE", "DEFAULT_KEYS", "ROLES", "check_info", "decode_frames", "is_lerobot_dir",
           "lerobot_keys", "local_replay", "read_lerobot"]
