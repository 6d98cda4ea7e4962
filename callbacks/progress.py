"""Progress displays for greedy evaluations: on Lightning's bar when it is live, else tqdm."""
from __future__ import annotations

import contextlib

import lightning as L


@contextlib.contextmanager
def eval_progress(trainer: L.Trainer | None, total: int):
    """Yields ``update(episodes, success_so_far)`` for a progress display of ``total`` episodes.

    A task on Lightning's rich progress bar while it is live (a second live
    display would fight it), else a tqdm bar; nothing without a ``trainer`` or
    when the trainer shows no progress bar.
    """
    from lightning.pytorch.callbacks import RichProgressBar

    bar = trainer.progress_bar_callback if trainer is not None else None
    if bar is None or not bar.is_enabled:
        yield lambda n, rate: None
    elif isinstance(bar, RichProgressBar) and bar.progress is not None and bar.progress.live.is_started:
        progress = bar.progress
        task = progress.add_task("greedy eval", total=total)

        def update(n: int, rate: float) -> None:
            progress.update(task, advance=n, description=f"greedy eval, success {rate:.3f}")
            progress.refresh()  # the bar auto-refreshes about once a second: show each batch

        try:
            yield update
        finally:
            progress.remove_task(task)
    else:
        yield from _tqdm_progress(total)


def annotate_eval_bar(trainer: L.Trainer, episodes: int, rate: float) -> None:
    """Adds episodes done and success so far to Lightning's validation/test progress bar."""
    from lightning.pytorch.callbacks import RichProgressBar, TQDMProgressBar

    bar, testing = trainer.progress_bar_callback, trainer.testing
    if bar is None or not bar.is_enabled or trainer.sanity_checking:
        return
    text = f"{episodes} episodes, success {rate:.3f}"
    if isinstance(bar, RichProgressBar) and bar.progress is not None:
        task = bar.test_progress_bar_id if testing else bar.val_progress_bar_id
        if task is not None:
            bar.progress.update(task, description=f"{'Testing' if testing else 'Validation'}: {text}")
    elif isinstance(bar, TQDMProgressBar):
        (bar.test_progress_bar if testing else bar.val_progress_bar).set_postfix_str(text)


def _tqdm_progress(total: int):
    from tqdm.auto import tqdm

    with tqdm(total=total, desc="greedy eval", unit="episode", leave=False, dynamic_ncols=True) as tq:
        def update(n: int, rate: float) -> None:
            tq.update(n)
            tq.set_postfix(success=f"{rate:.3f}")

        yield update


__all__ = ["annotate_eval_bar", "eval_progress"]
