"""Per-task success tables and success-vs-step plots (``EvalReport``).

After each :class:`~vla_grpo.callbacks.SplitEvaluation` evaluation, rank 0
rewrites ``eval_per_task.csv`` (every evaluation so far, one row per task),
redraws ``eval_curve.png`` (success vs GRPO step per split, beside a task x
step heatmap) and sends the latest table to every logger as ``eval/per_task``
(TensorBoard text, a W&B table, MLflow text; :mod:`vla_grpo.callbacks.sinks`),
with the CSV and PNG as W&B run files / MLflow artifacts. The history is kept
in checkpoints, so a resumed run keeps its curve.
"""
from __future__ import annotations

import csv
from pathlib import Path

import lightning as L

from vla_grpo.envs.scene.evaluate import SplitResult, render_table

from . import sinks
from .split_eval import FIT, SplitEvalListener

CSV_NAME = "eval_per_task.csv"
PLOT_NAME = "eval_curve.png"
CSV_FIELDS = ("step", "stage", "split", "task", "successes", "episodes", "success")


def result_rows(result: SplitResult) -> list[dict]:
    """One CSV row per (split, task) of an evaluation."""
    return [
        {"step": result.step, "stage": result.stage, "split": split, "task": task,
         "successes": succ, "episodes": eps, "success": round(succ / max(eps, 1), 4)}
        for split, tasks in result.counts.items()
        for task, (succ, eps) in tasks.items()
    ]


def write_csv(history: list[SplitResult], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        writer.writeheader()
        for result in history:
            writer.writerows(result_rows(result))


def read_csv(path: Path) -> list[SplitResult]:
    """The evaluations of an ``eval_per_task.csv`` (inverse of :func:`write_csv`)."""
    history: dict[tuple[str, int], SplitResult] = {}
    with Path(path).open(newline="") as f:
        for row in csv.DictReader(f):
            key = (row["stage"], int(row["step"]))
            result = history.setdefault(key, SplitResult(step=key[1], stage=key[0]))
            result.counts.setdefault(row["split"], {})[row["task"]] = (int(row["successes"]), int(row["episodes"]))
    return list(history.values())


def result_markdown(result: SplitResult) -> str:
    """A markdown table of the evaluation (TensorBoard renders text summaries as markdown)."""
    return render_table(result, fmt="markdown", title=f"step {result.step} ({result.stage})")


def _curve_axes(ax, history: list[SplitResult]) -> None:
    from matplotlib.ticker import MaxNLocator

    steps = [r.step for r in history]
    splits = list(dict.fromkeys(s for r in history for s in r.counts))
    for split in splits:
        xs = [st for st, r in zip(steps, history, strict=True) if split in r.counts]
        ys = [r.split_success()[split] for r in history if split in r.counts]
        style = "-" if split == "train" else "--"
        episodes = sum(e for _, e in history[-1].counts.get(split, {}).values())
        ax.plot(xs, ys, style, marker="o", lw=2, ms=4, label=f"{split} ({episodes} episodes)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, steps=[1, 2, 5, 10]))
    ax.set_xlabel("GRPO step")
    ax.set_ylabel("greedy success rate")
    ax.set_ylim(-0.03, 1.03)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title("success vs step, per split (- seen, -- unseen)", fontsize=10)


def _heatmap_axes(fig, ax, history: list[SplitResult]) -> None:
    import numpy as np

    rows = list(dict.fromkeys((s, t) for r in history for s, ts in r.counts.items() for t in ts))
    grid = np.full((len(rows), len(history)), np.nan)
    for j, result in enumerate(history):
        rates = result.task_success()
        for i, (split, task) in enumerate(rows):
            grid[i, j] = rates.get(split, {}).get(task, np.nan)
    im = ax.imshow(grid, aspect="auto", cmap="RdYlGn", vmin=0, vmax=1, interpolation="nearest")
    ax.set_yticks(range(len(rows)), [f"{s} · {t}" for s, t in rows], fontsize=7)
    every = max(1, len(history) // 10)
    ax.set_xticks(range(0, len(history), every), [str(r.step) for r in history][::every], fontsize=7)
    ax.set_xlabel("GRPO step")
    ax.set_title("per-task greedy success", fontsize=10)
    if grid.size <= 150:
        for (i, j), v in np.ndenumerate(grid):
            if not np.isnan(v):
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=6)
    fig.colorbar(im, ax=ax, fraction=0.04)


def plot_history(history: list[SplitResult], path: Path, title: str | None = None) -> None:
    """Success vs step per split, beside a task x step heatmap, as a PNG.

    Uses matplotlib's object API with the Agg canvas: no global backend switch,
    safe in headless training processes.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    tasks = len({(s, t) for r in history for s, ts in r.counts.items() for t in ts})
    fig = Figure(figsize=(12, max(4.0, 0.22 * tasks + 1.5)), layout="constrained")
    FigureCanvasAgg(fig)
    curve, heat = fig.subplots(1, 2, width_ratios=[1, 1.2])
    _curve_axes(curve, history)
    _heatmap_axes(fig, heat, history)
    if title:
        fig.suptitle(title, fontsize=11)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


class EvalReport(SplitEvalListener):
    """Per-task CSV, a table on every logger and a success-vs-step PNG, after each evaluation.

    Files go to ``dirpath`` (default ``<run dir>/eval``): ``eval_per_task.csv``
    and ``eval_curve.png`` (curves from the ``fit`` evaluations; from all of
    them when there are none, e.g. after ``validate``).

    Args:
        dirpath: where the CSV and PNG go.
        plot: draw the PNG.
        tensorboard_text: send the table to the loggers (TensorBoard text, a W&B table, MLflow
            text) and the CSV and PNG as files (W&B run files, MLflow artifacts).
        title: the plot's title (``None``: the module and suite names).
    """

    def __init__(self, dirpath: str | None = None, plot: bool = True, tensorboard_text: bool = True,
                 title: str | None = None) -> None:
        self.dirpath = dirpath
        self.plot = plot
        self.tensorboard_text = tensorboard_text
        self.title = title
        self.history: list[SplitResult] = []

    def csv_path(self) -> Path:
        return self.out_dir() / CSV_NAME

    def plot_path(self) -> Path:
        return self.out_dir() / PLOT_NAME

    def on_split_evaluation_end(self, trainer: L.Trainer, pl_module, result: SplitResult) -> None:
        # one entry per (stage, step): an evaluation repeated at a step replaces the older one
        self.history = [r for r in self.history if (r.stage, r.step) != (result.stage, result.step)]
        self.history.append(result)
        if not trainer.is_global_zero:
            return
        write_csv(self.history, self.csv_path())
        if self.plot:
            fit = sorted((r for r in self.history if r.stage == FIT), key=lambda r: r.step)
            suite = getattr(getattr(pl_module, "suite", None), "name", "")
            title = self.title or f"{type(pl_module).__name__} on {suite}: greedy eval"
            plot_history(fit or self.history, self.plot_path(), title)
        if self.tensorboard_text:
            self._send(trainer.loggers, result)

    def _send(self, loggers, result: SplitResult) -> None:
        """The table to every logger (TensorBoard text, W&B table, MLflow text), the CSV and PNG as files."""
        markdown = result_markdown(result)
        rows = [[row[c] for c in CSV_FIELDS] for row in result_rows(result)]
        files = [self.csv_path()] + ([self.plot_path()] if self.plot else [])
        for logger in loggers:
            sinks.log_table(logger, "eval/per_task", markdown=markdown, columns=list(CSV_FIELDS), rows=rows,
                            step=result.step)
            for path in files:
                sinks.log_file(logger, path, folder="eval")

    def state_dict(self) -> dict:
        return {"history": [r.to_dict() for r in self.history]}

    def load_state_dict(self, state_dict: dict) -> None:
        self.history = [SplitResult.from_dict(d) for d in state_dict.get("history", [])]


def main(argv: list[str] | None = None) -> None:
    """Redraws a plot from a run's CSV: ``python -m vla_grpo.callbacks CSV PNG [--title T]``."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("csv", type=Path, help="an eval_per_task.csv written by EvalReport")
    parser.add_argument("png", type=Path, help="where the plot goes")
    parser.add_argument("--title", default=None)
    args = parser.parse_args(argv)
    history = read_csv(args.csv)
    fit = [r for r in history if r.stage == FIT]
    plot_history(sorted(fit or history, key=lambda r: r.step), args.png, args.title)
