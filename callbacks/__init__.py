"""Evaluation, videos and reports on top of the trainer (``vla_grpo.callbacks``).

Add them under ``trainer.callbacks`` in a YAML config; removing any of them
never changes training::

    trainer:
      callbacks:
        - class_path: vla_grpo.callbacks.SplitEvaluation
          init_args: {at_fit_start: true}
        - class_path: vla_grpo.callbacks.EvalVideo
          init_args: {episodes_per_split: 4}
        - class_path: vla_grpo.callbacks.EvalReport

:class:`SplitEvaluation` runs (or collects) greedy evaluations on the seen and
unseen splits and hands each :class:`SplitResult` to the callbacks that define
``on_split_evaluation_end`` (:class:`EvalVideo`, :class:`EvalReport`).
"""
from __future__ import annotations

from vla_grpo.envs.scene.evaluate import SplitResult

from .report import EvalReport, plot_history, write_csv
from .split_eval import SplitEvalListener, SplitEvaluation, print_result
from .video import EvalVideo

__all__ = [
    "EvalReport", "EvalVideo", "SplitEvalListener", "SplitEvaluation", "SplitResult",
    "plot_history", "print_result", "write_csv",
]
