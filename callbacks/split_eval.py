"""The SplitEvaluation callback: when to evaluate on every split, and the per-task logs, table and hand-on.

:class:`SplitEvaluation` produces one :class:`SplitResult` per evaluation
(episodes from :func:`vla_grpo.evaluation.run_greedy` or the val loop),
logs ``eval/<split>/success`` and ``eval/<split>/<task>``, prints a per-task
table after ``validate``/``test`` and at the end of ``fit``, and hands the
result to every callback that defines ``on_split_evaluation_end`` (the
:class:`SplitEvalListener` subclasses :class:`~vla_grpo.callbacks.EvalVideo` and
:class:`~vla_grpo.callbacks.EvalReport`).

An evaluation happens

* whenever Lightning validates or tests (``trainer.val_check_interval`` GRPO
  steps during ``fit``, ``python -m vla_grpo validate``): the module's
  ``validation_step`` returns each episode's success, the callback only counts
  them per task (a module that returns nothing gets its batch re-evaluated);
* at fit start and fit end, and every ``every_n_steps`` training steps if set:
  the callback runs the greedy episodes itself on ``pl_module.rollout``.

``--trainer.limit_val_batches=0`` (Lightning's switch for "no validation")
turns both off. Under DDP both ways shard the episodes by rank (Lightning's
``DistributedSampler`` for the val loop, ``items[rank::world_size]`` here) and
all-reduce the per-task counts, so every rank logs the same numbers. The val
loop's sampler pads its last shard by repeating episodes, which can count a few
episodes twice; the callback's own evaluations count each exactly once.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_warn

from vla_grpo.envs.scene.evaluate import SplitResult, render_table
from vla_grpo.evaluation import EvalEpisodes, EvalItem, EvalSpec, run_greedy

from .progress import annotate_eval_bar, eval_progress

FIT = "fit"


def run_dir(trainer: L.Trainer) -> Path:
    """The logger's run dir (``default_root_dir`` without a logger).

    ``trainer.log_dir`` broadcasts from rank 0 under DDP: call it on every rank
    (in ``setup``), never from a rank-0-only branch, or the ranks deadlock.
    """
    return Path(trainer.log_dir or trainer.default_root_dir)


def result_table(result: SplitResult, caption: str | None = None):
    """A ``rich`` table: one section per split, its overall success first, then its tasks."""
    # outside fit the trainer's step is 0, not the checkpoint's: leave it out
    at = f", step {result.step}" if result.stage == FIT else ""
    title = f"greedy eval ({result.stage}{at}, {result.episodes()} episodes)"
    return render_table(result, fmt="rich", title=title, caption=caption)


def print_result(result: SplitResult, caption: str | None = None) -> None:
    """Prints the per-task table on rich's global console.

    The global console is the one Lightning's rich progress bar draws on, so the
    table lands above a live bar instead of being redrawn with it.
    """
    from rich import get_console

    get_console().print(result_table(result, caption))


class SplitEvaluation(Callback):
    """Greedy success on every split and task, logged, tabulated and handed on.

    Args:
        every_n_steps: also evaluate every this many training steps (``None``:
            only when Lightning validates, at ``trainer.val_check_interval``;
            don't set both to the same period, or those steps are evaluated twice).
        states_per_task: initial states ``0..n-1`` per task in the callback's own
            evaluations (``None``: the module's ``eval_spec``'s, so every point of
            the curve uses the same episodes).
        splits: splits of the callback's own evaluations (``None``: the module's
            ``eval_spec``'s, else every split of the suite).
        at_fit_start: evaluate before the first training step (step 0; not again when a run resumes).
        at_fit_end: evaluate after the last step unless that step was just evaluated.
        print_table: print the per-task table (rank 0) after validate/test and fit.
        progress: show a progress bar (episodes done, success so far) in the
            callback's own evaluations, when the trainer shows progress bars.
    """

    def __init__(
        self,
        every_n_steps: int | None = None,
        states_per_task: int | None = None,
        splits: list[str] | None = None,
        at_fit_start: bool = True,
        at_fit_end: bool = True,
        print_table: bool = True,
        progress: bool = True,
    ) -> None:
        if every_n_steps is not None and every_n_steps < 1:
            raise ValueError(f"`SplitEvaluation.every_n_steps` must be >= 1 or null (got {every_n_steps})")
        if states_per_task is not None and states_per_task < 1:
            raise ValueError(f"`SplitEvaluation.states_per_task` must be >= 1 or null (got {states_per_task})")
        self.every_n_steps = every_n_steps
        self.states_per_task = states_per_task
        self.splits = list(splits) if splits else None
        self.at_fit_start = at_fit_start
        self.at_fit_end = at_fit_end
        self.print_table = print_table
        self.progress = progress
        self.results: list[SplitResult] = []
        self._batch_items: list[EvalItem] = []
        self._batch_success: list[bool] = []
        self._warned: set[str] = set()

    def state_dict(self) -> dict:
        """The evaluations so far (the eval curve), carried by checkpoints so a resumed run keeps them."""
        return {"results": [r.to_dict() for r in self.results]}

    def load_state_dict(self, state_dict: dict) -> None:
        self.results = [SplitResult.from_dict(r) for r in state_dict.get("results", [])]

    @property
    def last(self) -> SplitResult | None:
        """The latest evaluation's result."""
        return self.results[-1] if self.results else None

    # -- the callback's own evaluations ----------------------------------------------
    def eval_spec(self, pl_module) -> EvalSpec:
        """The module's ``eval_spec`` with this callback's ``states_per_task`` and ``splits`` where set."""
        return pl_module.eval_spec.override(splits=self.splits, states_per_task=self.states_per_task)

    def evaluate(self, pl_module, items: list[EvalItem] | None = None, *, rank: int = 0,
                 world_size: int = 1, trainer: L.Trainer | None = None) -> EvalEpisodes:
        """Greedy episodes of this rank's shard of ``items`` (default: :meth:`eval_spec`'s items).

        Runs :func:`vla_grpo.evaluation.run_greedy` on ``pl_module.rollout`` with
        ``pl_module.policy``; with a ``trainer`` (and ``progress``) it shows
        episodes done and success so far.
        """
        items = items if items is not None else self.eval_spec(pl_module).items(pl_module.suite)
        show = self.progress and trainer is not None and trainer.is_global_zero
        with eval_progress(trainer if show else None, len(items[rank::world_size])) as update:
            return run_greedy(pl_module.rollout, pl_module.policy, items, rank=rank, world_size=world_size,
                              progress=update)

    def _own_evaluation(self, trainer: L.Trainer, pl_module) -> None:
        if trainer.limit_val_batches == 0:  # Lightning's "no validation" switch turns these off too
            return
        if getattr(pl_module, "rollout", None) is None:
            self._warn_once("no_rollout", "SplitEvaluation needs `pl_module.rollout` (a GroupedRollout); skipped")
            return
        if getattr(pl_module, "eval_spec", None) is None:
            self._warn_once("no_spec", "SplitEvaluation needs `pl_module.eval_spec` (an EvalSpec); skipped")
            return
        episodes = self.evaluate(pl_module, rank=trainer.global_rank, world_size=trainer.world_size,
                                 trainer=trainer)
        self._finish(trainer, pl_module, episodes, log_splits=True)

    # -- shared tail: reduce, log, print, hand on ------------------------------------
    def _finish(self, trainer: L.Trainer, pl_module, episodes: EvalEpisodes, log_splits: bool) -> SplitResult:
        counts = episodes.task_counts(pl_module.suite)
        if trainer.world_size > 1:
            counts = trainer.strategy.reduce(counts.to(pl_module.device), reduce_op="sum").cpu()
        stage = str(getattr(trainer.state.fn, "value", trainer.state.fn))
        result = SplitResult.from_task_counts(pl_module.suite, counts, trainer.global_step, stage)
        self.results.append(result)
        # the module logs its own val-loop split means; only the callback's own evals add them
        metrics = result.metrics(per_split=log_splits)
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)
        if self.print_table and stage != FIT and trainer.is_global_zero:
            print_result(result, f"checkpoint: {Path(trainer.ckpt_path).name}" if trainer.ckpt_path else None)
        for cb in trainer.callbacks:
            hook = getattr(cb, "on_split_evaluation_end", None)
            if cb is not self and callable(hook):
                hook(trainer, pl_module, result)
        return result

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            rank_zero_warn(message)

    def _last_fit_step(self) -> int | None:
        steps = [r.step for r in self.results if r.stage == FIT]
        return steps[-1] if steps else None

    # -- fit schedule ------------------------------------------------------------------
    def on_train_start(self, trainer: L.Trainer, pl_module) -> None:
        # step 0 only: a run resumed at step k keeps its curve (carried by the checkpoint) and does not
        # re-evaluate where it stopped (on LIBERO an eval is ~30 min; it would add one per resume)
        if self.at_fit_start and trainer.global_step == 0 and self._last_fit_step() != 0:
            self._own_evaluation(trainer, pl_module)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        step = trainer.global_step
        if self.every_n_steps and step % self.every_n_steps == 0 and step != self._last_fit_step():
            self._own_evaluation(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module) -> None:
        if self.at_fit_end and self._last_fit_step() != trainer.global_step:
            self._own_evaluation(trainer, pl_module)
        if self.print_table and self.last is not None and trainer.is_global_zero:
            print_result(self.last)

    # -- the val/test loop: count the module's outcomes per task -----------------------
    def _collect(self, trainer: L.Trainer, pl_module, outputs, batch) -> None:
        if trainer.sanity_checking:
            return
        success = outputs.get("success") if isinstance(outputs, Mapping) else None
        if success is None:
            # a module whose validation_step returns no per-episode outcomes: re-run its batch
            self._warn_once("no_outputs", f"{type(pl_module).__name__}.validation_step returns no "
                                          "'success' list; SplitEvaluation re-evaluates its batches")
            success = run_greedy(pl_module.rollout, pl_module.policy, batch).success
        self._batch_items.extend(batch)
        self._batch_success.extend(bool(s) for s in success)
        if self.progress and trainer.is_global_zero:
            done = len(self._batch_success)
            annotate_eval_bar(trainer, done, sum(self._batch_success) / max(done, 1))

    def _flush(self, trainer: L.Trainer, pl_module) -> None:
        episodes = EvalEpisodes(self._batch_items, self._batch_success)
        self._batch_items, self._batch_success = [], []
        if not trainer.sanity_checking:
            self._finish(trainer, pl_module, episodes, log_splits=False)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._collect(trainer, pl_module, outputs, batch)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module) -> None:
        self._flush(trainer, pl_module)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._collect(trainer, pl_module, outputs, batch)

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module) -> None:
        self._flush(trainer, pl_module)


class SplitEvalListener(Callback):
    """Base of callbacks that act on :class:`SplitEvaluation`'s results.

    Subclasses implement :meth:`on_split_evaluation_end`; without a
    ``SplitEvaluation`` in the trainer they warn once and do nothing.
    """

    #: where files go under the run dir when ``dirpath`` is not given
    default_subdir = "eval"
    dirpath: str | None = None
    _out_dir: Path | None = None

    def out_dir(self) -> Path:
        """``dirpath``, else ``<run dir>/<default_subdir>`` (resolved in :meth:`setup`)."""
        if self.dirpath is not None:
            return Path(self.dirpath)
        return self._out_dir if self._out_dir is not None else Path(self.default_subdir)

    def setup(self, trainer: L.Trainer, pl_module, stage: str) -> None:
        self._out_dir = run_dir(trainer) / self.default_subdir
        if not any(isinstance(cb, SplitEvaluation) for cb in trainer.callbacks):
            rank_zero_warn(f"{type(self).__name__} acts on SplitEvaluation's results and the trainer "
                           "has no SplitEvaluation callback: it will do nothing")

    def on_split_evaluation_end(self, trainer: L.Trainer, pl_module, result: SplitResult) -> None:
        """Called on every rank after each evaluation, with the all-reduced result."""
