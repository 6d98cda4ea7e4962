"""Episodes of (task, state) jobs in padded batches, success counted per task, and the one table renderer.

The policy-independent half of evaluation, shared by the trainer's greedy
evaluation (``vla_grpo.evaluation``, which plays batches on its rollout engine)
and the suites' scripted-expert reports (``python -m vla_grpo.envs.<suite>``,
which play them on one batched env here):

* :func:`play_batches` runs a list of jobs in batches of a fixed size, padding
  the last batch with copies of its last job (and, for ranks that must run in
  lockstep, whole batches of a filler job); :func:`play_jobs` does it on a
  suite's batched env with a ``play(env, td)`` function;
* :class:`SplitResult` (``{split: {task: (successes, episodes)}}``) is the
  result type, built by :func:`count_by_task`, the one per-task count;
* :func:`render_table` draws a result as markdown or a ``rich`` table.

Nothing here imports anything else of ours but :mod:`vla_grpo.envs.base`.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch
from tensordict import TensorDict, TensorDictBase

from ..base import GROUP_ID_KEY, INIT_STATE_KEY, TASK_INDEX_KEY, Suite

T = TypeVar("T")
R = TypeVar("R")


# -- batches ------------------------------------------------------------------------------
def padded_batches(jobs: Sequence[T], size: int, *, num_batches: int | None = None,
                   filler: T | None = None) -> Iterator[tuple[list[T], int]]:
    """Yields ``(padded, real)``: ``size`` jobs per batch, the first ``real`` of them ``jobs``'.

    The last batch is padded with copies of its last job. With ``num_batches``
    (at least the batches ``jobs`` need), the extra batches are ``size`` copies of
    ``filler`` (``real`` = 0): ranks that must run as many batches as each other
    (an FSDP policy gathers its weights per batch on all of them together).
    """
    if size < 1:
        raise ValueError(f"batch size must be >= 1 (got {size})")
    needed = -(-len(jobs) // size)
    total = needed if num_batches is None else num_batches
    if total < needed:
        raise ValueError(f"num_batches={num_batches} is fewer than the {needed} batches of {len(jobs)} jobs")
    for b in range(total):
        batch = list(jobs[b * size:(b + 1) * size])
        if not batch:
            if filler is None:
                raise ValueError("extra lockstep batches need a `filler` job")
            yield [filler] * size, 0
        else:
            yield batch + [batch[-1]] * (size - len(batch)), len(batch)


def play_batches(jobs: Sequence[T], size: int, run_batch: Callable[[list[T]], Sequence[R]], *,
                 num_batches: int | None = None, filler: T | None = None,
                 on_batch: Callable[[list[R]], None] | None = None) -> list[R]:
    """``run_batch(padded)`` on every batch of :func:`padded_batches`; the outcomes of ``jobs``, in order.

    ``run_batch`` returns one outcome per job of the padded batch; the padding's
    outcomes are dropped. ``on_batch`` gets each batch's real outcomes.
    """
    out: list[R] = []
    for padded, real in padded_batches(jobs, size, num_batches=num_batches, filler=filler):
        outcomes = list(run_batch(padded))[:real]
        out.extend(outcomes)
        if on_batch is not None and real:
            on_batch(outcomes)
    return out


def reset_td(jobs: Sequence[tuple[int, int]]) -> TensorDict:
    """A suite env's reset input for ``(task_index, init_state_id)`` jobs, one per sub-env (group 0)."""
    def col(values):
        return torch.tensor(values, dtype=torch.int64).view(-1, 1)

    return TensorDict({TASK_INDEX_KEY: col([t for t, _ in jobs]), INIT_STATE_KEY: col([s for _, s in jobs]),
                       GROUP_ID_KEY: col([0] * len(jobs))}, batch_size=[len(jobs)])


def play_jobs(suite: Suite, jobs: Sequence[tuple[int, int]], play: Callable[[Any, TensorDictBase], Sequence[R]],
              *, chunk_size: int, num_envs: int) -> list[R]:
    """Plays ``(task, state)`` jobs on one env of ``min(num_envs, len(jobs))`` sub-envs, batch by batch.

    ``play(env, td)`` gets the env just reset to a padded batch (``td`` its first
    observation) and returns one outcome per sub-env (its success, or more).
    The env is closed at the end.
    """
    if not jobs:
        return []
    env = suite.make_env(min(num_envs, len(jobs)), chunk_size=chunk_size)
    try:
        return play_batches(jobs, env.batch_size[0], lambda padded: play(env, env.reset(reset_td(padded))))
    finally:
        env.close()


def step_until_done(env, td: TensorDictBase, act: Callable[[TensorDictBase], TensorDictBase],
                    max_decisions: int, after_step: Callable[[], None] | None = None) -> TensorDictBase:
    """Steps ``env`` with ``act(td)`` (``td`` with its ``action`` set) until every episode is done or
    ``max_decisions`` chunks; ``after_step`` runs after each chunk. Returns the last observation."""
    for _ in range(max_decisions):
        td = env.step(act(td))["next"]
        if after_step is not None:
            after_step()
        if td["done"].all():
            break
    return td


# -- per-task counts ----------------------------------------------------------------------
def task_label(split: str, task_name: str) -> str:
    """A task's name without its split's prefix (``train/red`` -> ``red`` in ``train``)."""
    prefix = f"{split}/"
    return task_name[len(prefix):] if task_name.startswith(prefix) else task_name


def count_by_task(suite: Suite, task_indices: Sequence[int], success: Sequence[bool]) -> torch.Tensor:
    """``[num_tasks, 2]`` float64 (successes, episodes) per task, the layout ranks all-reduce."""
    counts = torch.zeros(len(suite.all_tasks()), 2, dtype=torch.float64)
    for task, ok in zip(task_indices, success, strict=True):
        counts[task, 0] += float(ok)
        counts[task, 1] += 1.0
    return counts


@dataclass
class SplitResult:
    """The outcome of one evaluation.

    Attributes:
        step: the trainer's global step (GRPO steps) at evaluation time.
        stage: ``fit``, ``validate`` or ``test`` (or a report's name).
        counts: ``{split: {task: (successes, episodes)}}`` in suite order.
    """

    step: int
    stage: str
    counts: dict[str, dict[str, tuple[int, int]]] = field(default_factory=dict)

    @classmethod
    def from_task_counts(cls, suite: Suite, counts: torch.Tensor, step: int = 0, stage: str = "", *,
                         full_names: bool = False) -> SplitResult:
        """From a ``[num_tasks, 2]`` (successes, episodes) tensor in ``suite.all_tasks()`` order.

        Tasks are named by :func:`task_label` (by their full names with ``full_names``).
        """
        out: dict[str, dict[str, tuple[int, int]]] = {}
        for task, (succ, eps) in zip(suite.all_tasks(), counts.tolist(), strict=True):
            if eps > 0:
                name = task.name if full_names else task_label(task.split, task.name)
                out.setdefault(task.split, {})[name] = (round(succ), round(eps))
        return cls(step=step, stage=stage, counts=out)

    @classmethod
    def from_outcomes(cls, suite: Suite, task_indices: Sequence[int], success: Sequence[bool], step: int = 0,
                      stage: str = "", *, full_names: bool = False) -> SplitResult:
        """From each episode's task and success (:func:`count_by_task`, then :meth:`from_task_counts`)."""
        return cls.from_task_counts(suite, count_by_task(suite, task_indices, success), step, stage,
                                    full_names=full_names)

    def split_counts(self) -> dict[str, tuple[int, int]]:
        """``{split: (successes, episodes)}`` over all of a split's tasks."""
        return {split: (sum(s for s, _ in tasks.values()), sum(e for _, e in tasks.values()))
                for split, tasks in self.counts.items()}

    def split_success(self) -> dict[str, float]:
        """Success rate of each split over all its episodes."""
        return {split: succ / eps for split, (succ, eps) in self.split_counts().items()}

    def task_success(self) -> dict[str, dict[str, float]]:
        """``{split: {task: success rate}}``."""
        return {split: {t: s / max(e, 1) for t, (s, e) in tasks.items()} for split, tasks in self.counts.items()}

    def episodes(self) -> int:
        return sum(e for tasks in self.counts.values() for _, e in tasks.values())

    def metrics(self, per_split: bool = True) -> dict[str, float]:
        """``eval/<split>/success`` (if ``per_split``) and ``eval/<split>/<task>``."""
        out = {}
        if per_split:
            out.update({f"eval/{split}/success": v for split, v in self.split_success().items()})
        for split, tasks in self.task_success().items():
            out.update({f"eval/{split}/{task}": v for task, v in tasks.items()})
        return out

    def to_dict(self) -> dict:
        return {"step": self.step, "stage": self.stage,
                "counts": {s: {t: list(v) for t, v in ts.items()} for s, ts in self.counts.items()}}

    @classmethod
    def from_dict(cls, d: dict) -> SplitResult:
        counts = {s: {t: tuple(v) for t, v in ts.items()} for s, ts in d["counts"].items()}
        return cls(step=int(d["step"]), stage=str(d["stage"]), counts=counts)


# -- the table ----------------------------------------------------------------------------
@dataclass(frozen=True)
class TableRow:
    """One row of a result's table: a task, or (``total``) a whole split, its task then ``all``."""

    split: str
    task: str
    successes: int
    episodes: int
    total: bool = False

    @property
    def rate(self) -> float:
        return self.successes / max(self.episodes, 1)


@dataclass(frozen=True)
class Column:
    """A table column: its header, its cell text per row, right-justified or not, bold on total rows,
    and ``grouped`` (shown on a split's total row only, in a ``rich`` table's split sections)."""

    name: str
    cell: Callable[[TableRow], str]
    right: bool = False
    bold: bool = True
    grouped: bool = False


SUCCESS_COLUMNS = (
    Column("split", lambda r: r.split, grouped=True),
    Column("task", lambda r: r.task),
    Column("success", lambda r: f"{r.rate:.3f}", right=True),
    Column("episodes", lambda r: str(r.episodes), right=True, bold=False),
)


def table_rows(result: SplitResult, *, totals: bool = True,
               order: Sequence[tuple[str, str]] | None = None) -> list[TableRow]:
    """Split by split: its total row (with ``totals``), then its tasks; or the ``(split, task)`` ``order``."""
    if order is not None:
        return [TableRow(s, t, *result.counts[s][t]) for s, t in order]
    rows = []
    for split, (succ, eps) in result.split_counts().items():
        if totals:
            rows.append(TableRow(split, "all", succ, eps, total=True))
        rows += [TableRow(split, task, s, e) for task, (s, e) in result.counts[split].items()]
    return rows


def render_table(result: SplitResult, *, fmt: str = "markdown", columns: Sequence[Column] = SUCCESS_COLUMNS,
                 totals: bool = True, order: Sequence[tuple[str, str]] | None = None, title: str | None = None,
                 caption: str | None = None):
    """The result as a table: a markdown string (``fmt="markdown"``) or a ``rich.table.Table`` (``"rich"``).

    Rows are :func:`table_rows`; ``title`` heads a markdown table (a blank line
    after it) or titles a rich one, ``caption`` goes under a rich one.
    """
    rows = table_rows(result, totals=totals, order=order)
    if fmt == "markdown":
        lines = [title, ""] if title else []
        lines.append("| " + " | ".join(c.name for c in columns) + " |")
        lines.append("|" + "|".join("---:" if c.right else "---" for c in columns) + "|")
        for r in rows:
            cells = [f"**{c.cell(r)}**" if r.total and c.bold else c.cell(r) for c in columns]
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines)
    if fmt != "rich":
        raise ValueError(f"`fmt` must be 'markdown' or 'rich' (got {fmt!r})")
    from rich.table import Table

    table = Table(title=title, title_justify="left", caption=caption, caption_justify="left")
    for c in columns:
        table.add_column(c.name, justify="right" if c.right else "left")
    for i, r in enumerate(rows):
        cells = ["" if c.grouped and totals and not r.total else c.cell(r) for c in columns]
        cells = [f"[bold]{x}[/]" if r.total and c.bold else x for x, c in zip(cells, columns, strict=True)]
        last = i == len(rows) - 1 or rows[i + 1].split != r.split
        table.add_row(*cells, end_section=last and not r.total)
    return table


# -- the scripted experts' report -----------------------------------------------------------
@dataclass
class ExpertResult:
    """The expert's episodes on one task: success and control steps of each."""

    successes: list[bool]
    steps: list[int]


def expert_success(suite: Suite, task_indices: Sequence[int], states: Sequence[int], *, chunk_size: int = 8,
                   num_envs: int = 16) -> dict[int, ExpertResult]:
    """The scripted expert on every (task, state) pair, ``num_envs`` episodes at a time.

    The suite's env must offer ``expert_chunk()`` and per-sub-env simulators ``sims`` (the kit's envs).
    """
    def play(env, td: TensorDictBase) -> list[tuple[bool, int]]:
        td = step_until_done(env, td, lambda td: td.set("action", env.expert_chunk()),
                             suite.max_decisions(chunk_size))
        return [(bool(td["success"][i]), env.sims[i].steps) for i in range(env.batch_size[0])]

    jobs = [(t, s) for t in task_indices for s in states]
    results = {t: ExpertResult([], []) for t in task_indices}
    for (t, _), (ok, steps) in zip(jobs, play_jobs(suite, jobs, play, chunk_size=chunk_size, num_envs=num_envs),
                                   strict=True):
        results[t].successes.append(ok)
        results[t].steps.append(steps)
    return results


def expert_result(suite: Suite, results: dict[int, ExpertResult]) -> SplitResult:
    """The experts' per-task counts (full task names), stage ``expert``."""
    tasks = [t for t, r in results.items() for _ in r.successes]
    success = [ok for r in results.values() for ok in r.successes]
    return SplitResult.from_outcomes(suite, tasks, success, stage="expert", full_names=True)


def expert_columns(suite: Suite, results: dict[int, ExpertResult]) -> tuple[Column, ...]:
    """The report's columns: task, split, success (``3/4 (75%)``), mean and max steps, the step limit."""
    by_name = {suite.all_tasks()[t].name: (suite.all_tasks()[t], r) for t, r in results.items()}

    def steps(row: TableRow) -> list[int]:
        return by_name[row.task][1].steps

    return (
        Column("task", lambda r: r.task), Column("split", lambda r: r.split),
        Column("success", lambda r: f"{r.successes}/{r.episodes} ({100 * r.rate:.0f}%)"),
        Column("mean steps", lambda r: f"{sum(steps(r)) / len(steps(r)):.0f}"),
        Column("max steps", lambda r: str(max(steps(r)))),
        Column("limit", lambda r: str(by_name[r.task][0].max_steps)),
    )


def expert_report_main(make_suite, argv: list[str] | None, *, description: str, num_envs: int,
                       catalogue: bool = True) -> None:
    """``python -m vla_grpo.envs.<suite>``: print the scripted experts' success per task as a table.

    ``make_suite(pretrain_catalogue)`` builds the suite. With ``catalogue`` (a suite with a
    pretraining catalogue), ``--pretrain`` reports the catalogue's tasks (the ``pretrain`` split)
    instead of the suite's own.
    """
    import argparse

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--states", type=int, default=None, help="initial states per task (default: all)")
    parser.add_argument("--chunk-size", type=int, default=8)
    parser.add_argument("--num-envs", type=int, default=num_envs)
    parser.add_argument("--tasks", default=None, help="comma-separated task names (default: all)")
    if catalogue:
        parser.add_argument("--pretrain", action="store_true", help="the pretraining catalogue's tasks")
    args = parser.parse_args(argv)
    pretrain = bool(getattr(args, "pretrain", False))
    suite = make_suite(pretrain)
    specs = suite.all_tasks()
    names = [t.name for t in specs]
    if args.tasks:
        tasks = [names.index(t) for t in args.tasks.split(",")]
    else:
        tasks = [i for i, t in enumerate(specs) if (t.split == "pretrain") == pretrain]
    start = time.perf_counter()
    results = expert_success(suite, tasks, range(args.states or suite.num_init_states),
                             chunk_size=args.chunk_size, num_envs=args.num_envs)
    result = expert_result(suite, results)
    order = [(specs[t].split, specs[t].name) for t in results]  # the tasks as asked, not split by split
    print(render_table(result, columns=expert_columns(suite, results), totals=False, order=order))
    total, episodes = (sum(v) for v in zip(*result.split_counts().values(), strict=True))
    print(f"overall {total}/{episodes} ({100 * total / episodes:.1f}%) in {time.perf_counter() - start:.0f} s")


__all__ = [
    "SUCCESS_COLUMNS", "Column", "ExpertResult", "SplitResult", "TableRow", "count_by_task", "expert_columns",
    "expert_report_main", "expert_result", "expert_success", "padded_batches", "play_batches", "play_jobs",
    "render_table", "reset_td", "step_until_done", "table_rows", "task_label",
]
