"""A test callback: each rank writes what it rolled out and a weight checksum."""
from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import torch


class DDPProbe(L.Callback):
    """Writes ``rank<k>.json``: drawn prompts, global step, per-tensor weight sums."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = Path(out_dir)
        self.initial: list[float] = []
        self.prompts: list[list[int]] = []

    @staticmethod
    def _sums(module) -> list[float]:
        return [float(p.detach().double().sum()) for p in module.policy.parameters()]

    def on_train_start(self, trainer, pl_module) -> None:
        self.initial = self._sums(pl_module)
        sampler, draw = pl_module.sampler, pl_module.sampler.draw

        def recording_draw(n: int):  # the test's own record of what this rank drew
            prompts = draw(n)
            self.prompts.extend(list(p) for p in prompts)
            return prompts

        sampler.draw = recording_draw

    def on_train_end(self, trainer, pl_module) -> None:
        weights = self._sums(pl_module)
        record = {
            "world_size": trainer.world_size,
            "global_step": trainer.global_step,
            "prompts": self.prompts,
            "weights": weights,
            "weights_changed": any(abs(a - b) > 0 for a, b in zip(weights, self.initial, strict=True)),
            "torch_threads": torch.get_num_threads(),
        }
        self.out_dir.mkdir(parents=True, exist_ok=True)
        (self.out_dir / f"rank{trainer.global_rank}.json").write_text(json.dumps(record))
