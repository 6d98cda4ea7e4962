"""The CLI's progress bar: Lightning's rich bar naming the step budget of a ``max_steps`` run."""
from __future__ import annotations

from lightning.pytorch.callbacks import RichProgressBar


class StepBudgetProgressBar(RichProgressBar):
    """Lightning's rich bar, without its ``Epoch 76/-2`` when a run is bounded by ``max_steps``.

    With ``max_steps`` and no ``max_epochs`` Lightning sets ``max_epochs = -1``
    and the bar prints ``max_epochs - 1``; here the suffix is the step budget,
    refreshed after every batch (GRPO runs one endless epoch, so the step count
    moves within it). Only public hooks and the bar's public ``progress`` /
    ``train_progress_bar_id`` are used: each hook lets Lightning set its own
    description first, then replaces it.
    """

    def train_description(self, current_epoch: int) -> str | None:
        """``Epoch 3 (step 120/1000)`` for a step-bounded run; None when Lightning's own fits."""
        trainer = self.trainer
        if trainer.max_epochs is not None and trainer.max_epochs >= 0:
            return None
        steps = f" (step {trainer.global_step}/{trainer.max_steps})" if trainer.max_steps > 0 else ""
        return f"Epoch {current_epoch}{steps}"

    def _show_train_description(self, trainer) -> None:
        description = self.train_description(trainer.current_epoch)
        if description is not None and self.progress is not None and self.train_progress_bar_id is not None:
            self.progress.update(self.train_progress_bar_id, description=description)  # drawn at its next refresh

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        super().on_train_epoch_start(trainer, pl_module)
        self._show_train_description(trainer)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        self._show_train_description(trainer)


__all__ = ["StepBudgetProgressBar"]
