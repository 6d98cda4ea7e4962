"""W&B (offline) and MLflow (file store) runs from docs/loggers.md's snippets get what TensorBoard gets.

Each test runs a 2-step toy fit with the docs' snippet (TensorBoard and the other logger side
by side), then reads every scalar back from both and checks the same names, steps and values,
and that the per-task table and the eval videos reached the other logger. Needs the extras:
``pip install -e ".[wandb,mlflow,video]"`` (``tox -e loggers``); skipped without them.
"""
from __future__ import annotations

import json
import math
import re
import struct
import time
from pathlib import Path

import pytest

from vla_grpo.cli import main
from vla_grpo.tb import read_scalars

ROOT = Path(__file__).resolve().parents[1]
QUIET = ["--trainer.enable_progress_bar=false", "--model.groups_per_step=2", "--model.prompts_per_round=2",
         "--model.eval_states_per_task=2", "--trainer.max_steps=2"]
#: TensorBoardLogger's own placeholder for its HPARAMS tab (logged by log_hyperparams), not a metric of ours
TB_ONLY = {"hp_metric"}


def docs_snippet(name: str, root: Path) -> Path:
    """docs/loggers.md's YAML block marked ``<!-- snippet: name -->``, its ``runs/`` moved under ``root``."""
    text = (ROOT / "docs/loggers.md").read_text()
    block = re.search(rf"<!-- snippet: {name} -->\n```yaml\n(.*?)```", text, re.S)
    assert block, f"docs/loggers.md has no `{name}` snippet"
    path = root / f"loggers_{name}.yaml"
    path.write_text(block.group(1).replace("runs/", f"{root}/runs/"))
    return path


def _fit(tmp_path: Path, snippet: Path) -> dict[str, list[tuple[int, float]]]:
    """The toy fit with ``snippet``; returns TensorBoard's scalars."""
    main(["fit", "-c", str(ROOT / "conf/toy.yaml"), "-c", str(snippet),
          f"--trainer.default_root_dir={tmp_path}/runs/toy", *QUIET])
    scalars = read_scalars(tmp_path / "runs/toy/tb")
    assert {"train/loss", "rollout/success_rate", "eval/train/success", "eval/unseen_layout/red"} <= set(scalars)
    return {k: v for k, v in scalars.items() if k not in TB_ONLY}


def _assert_same(tb: dict, other: dict) -> None:
    assert sorted(other) == sorted(tb)
    for name, points in tb.items():
        got = sorted(other[name])
        assert [s for s, _ in got] == [s for s, _ in points], name
        # TensorBoard stores float32: equal to its rounding
        assert all(math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-6) for (_, a), (_, b) in zip(got, points, strict=True)), name


# -- W&B -------------------------------------------------------------------------------------
_WANDB_HEADER = b":W&B" + struct.pack("<HB", 0xBEE1, 0)


def wandb_records(path: Path):
    """The protobuf records of an offline run's ``run-<id>.wandb`` file.

    The file is a LevelDB-style log (a 7-byte header, then 32 KiB blocks of records, each with a
    7-byte header: crc32c, length, type FULL/FIRST/MIDDLE/LAST). wandb 0.31 dropped its Python
    reader (``wandb.sdk.internal.datastore``); the records are ``wandb.proto``'s ``Record``. A file
    still being written yields its complete records.
    """
    from google.protobuf.message import DecodeError
    from wandb.proto import wandb_internal_pb2

    data, block = path.read_bytes(), 32768
    assert data[:7] == _WANDB_HEADER, f"{path} is not a W&B run file"
    pos, chunk = 7, b""
    while pos + 7 <= len(data):
        left = block - pos % block
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if left < 7 or (length == 0 and kind == 0):  # the rest of the block is padding
            pos += left
            continue
        if pos + 7 + length > len(data):  # a record still being written
            return
        body, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        chunk = body if kind in (1, 2) else chunk + body
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            try:
                record.ParseFromString(chunk)
            except DecodeError:  # torn by a writer still at it: the file ends here for now
                return
            yield record


def wandb_history(run_file: Path) -> tuple[dict, dict, list[str]]:
    """``({metric: [(step, value)]}, {media key: [(step, value)]}, files)`` of an offline run;
    a row's step is its ``trainer/global_step`` (Lightning's step key)."""
    scalars, media, files = {}, {}, []
    for record in wandb_records(run_file):
        kind = record.WhichOneof("record_type")
        if kind == "files":
            files += [f.path for f in record.files.files]
        if kind != "history":
            continue
        row = {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
        step = row["trainer/global_step"]
        for key, value in row.items():
            if key.endswith("/_type"):
                media.setdefault(key[: -len("/_type")], []).append((step, value))
            elif isinstance(value, int | float) and not key.startswith("_") and key != "trainer/global_step":
                if not any(key.startswith(f"{m}/") for m in media):  # a media object's own fields
                    scalars.setdefault(key, []).append((step, value))
    media_fields = {k for k in scalars if any(k.startswith(f"{m}/") for m in media)}
    return {k: v for k, v in scalars.items() if k not in media_fields}, media, files


def test_a_toy_fit_with_the_wandb_snippet_logs_what_tensorboard_gets(tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    tb = _fit(tmp_path, docs_snippet("wandb", tmp_path))
    wandb.finish()  # close the run (Lightning leaves it open for the caller)
    run_file = next((tmp_path / "runs/toy/wandb").glob("offline-run-*/run-*.wandb"))
    # wandb-core, a process of its own, writes the file: wait for the run's last record
    deadline = time.monotonic() + 120
    while not any(r.WhichOneof("record_type") == "exit" for r in wandb_records(run_file)):
        assert time.monotonic() < deadline, f"{run_file} has no exit record after wandb.finish()"
        time.sleep(0.5)
    scalars, media, files = wandb_history(run_file)
    _assert_same(tb, scalars)
    # the table and the videos, at the evaluations' steps (0: before training, 2: the end)
    assert media["eval/per_task"] == [(0, "table-file"), (2, "table-file")]
    assert media["eval_video/train"] == media["eval_video/unseen_layout"] == [(0, "videos"), (2, "videos")]
    videos = [f for f in files if f.startswith("media/videos/eval_video/")]
    assert len(videos) == 4 and all(f.endswith((".mp4", ".gif")) for f in videos)
    table = next(run_file.parent.glob("files/media/table/eval/per_task_*.table.json"))
    assert json.loads(table.read_text())["columns"] == ["step", "stage", "split", "task", "successes",
                                                         "episodes", "success"]
    assert {"eval_per_task.csv", "eval_curve.png"} <= set(files)


# -- MLflow ----------------------------------------------------------------------------------
def test_a_toy_fit_with_the_mlflow_snippet_logs_what_tensorboard_gets(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # as docs/loggers.md says
    tb = _fit(tmp_path, docs_snippet("mlflow", tmp_path))

    client = MlflowClient(f"file:{tmp_path}/runs/mlruns")
    (run,) = client.search_runs([client.get_experiment_by_name("vla_grpo").experiment_id])
    run_id = run.info.run_id
    logged = {k: [(m.step, m.value) for m in client.get_metric_history(run_id, k)] for k in run.data.metrics}
    _assert_same(tb, logged)

    def artifacts(path=None):
        for item in client.list_artifacts(run_id, path):
            yield from artifacts(item.path) if item.is_dir else [item.path]

    files = set(artifacts())
    assert {"eval/eval_per_task.csv", "eval/eval_curve.png"} <= files
    assert {f.rsplit(".", 1)[0] for f in files if f.startswith("eval/videos/")} == {
        f"eval/videos/step_00000{s}/{split}" for s in (0, 2) for split in ("train", "unseen_layout")}
    # the table MLflow keeps is TensorBoard's text, word for word
    events = EventAccumulator(str(next((tmp_path / "runs/toy/tb").glob("version_*"))), size_guidance={"tensors": 0})
    events.Reload()
    tb_text = {e.step: e.tensor_proto.string_val[0].decode() for e in events.Tensors("eval/per_task/text_summary")}
    assert sorted(tb_text) == [0, 2]
    for step, text in tb_text.items():
        local = client.download_artifacts(run_id, f"eval/per_task/step_{step:06d}.md", str(tmp_path))
        assert Path(local).read_text() == text


def test_a_logger_that_cannot_start_is_one_line_saying_why(tmp_path, monkeypatch, capsys):
    pytest.importorskip("mlflow")
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    with pytest.raises(SystemExit) as exit_:
        _fit(tmp_path, docs_snippet("mlflow", tmp_path))
    assert exit_.value.code != 0
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("error: ") and "MLFLOW_ALLOW_FILE_STORE" in last
