"""A test callback: each rank writes what it rolled out, evaluated and logged, and weight checksums."""
from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import torch


class DDPProbe(L.Callback):
    """Writes ``rank<k>.json``: drawn prompts, global step, per-tensor weight sums (at the end and
    after each step), the eval items this rank ran with their outcomes, the logged eval metrics,
    and how the policy is sharded (FSDP)."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = Path(out_dir)
        self.initial: list[float] = []
        self.prompts: list[list[int]] = []
        self.step_weights: list[list[float]] = []
        self.eval_items: list[list] = []
        self.eval_metrics: dict[str, float] = {}
        self.sharding: dict = {}

    @staticmethod
    def _sums(module) -> list[float]:
        """Per-tensor sums of this rank's weights (of its shards, under FSDP)."""
        return [float((p.to_local() if hasattr(p, "to_local") else p).detach().double().sum())
                for p in module.policy.parameters()]

    def on_train_start(self, trainer, pl_module) -> None:
        self.initial = self._sums(pl_module)
        params = list(pl_module.policy.parameters())
        local = [p.to_local() if hasattr(p, "to_local") else p for p in params]
        self.sharding = {"class": type(pl_module.policy).__name__, "full_numel": sum(p.numel() for p in params),
                         "local_numel": sum(p.numel() for p in local),
                         "param_dtypes": sorted({str(m._get_fsdp_state()._mp_policy.param_dtype)
                                                 for m in pl_module.policy.modules() if hasattr(m, "unshard")})}
        sampler, draw = pl_module.sampler, pl_module.sampler.draw

        def recording_draw(n: int):  # the test's own record of what this rank drew
            prompts = draw(n)
            self.prompts.extend(list(p) for p in prompts)
            return prompts

        sampler.draw = recording_draw

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        self.step_weights.append(self._sums(pl_module))

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int, dataloader_idx: int = 0):
        self.eval_items.extend([it.split, it.prompt.task_index, it.prompt.init_state_id, ok]
                               for it, ok in zip(batch, outputs["success"], strict=True))

    def on_validation_end(self, trainer, pl_module) -> None:
        self.eval_metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("eval/")}

    def on_train_end(self, trainer, pl_module) -> None:
        weights = self._sums(pl_module)
        record = {
            "world_size": trainer.world_size,
            "global_step": trainer.global_step,
            "prompts": self.prompts,
            "weights": weights,
            "weights_changed": any(abs(a - b) > 0 for a, b in zip(weights, self.initial, strict=True)),
            "torch_threads": torch.get_num_threads(),
            "step_weights": self.step_weights,
            "eval_items": self.eval_items,
            "eval_metrics": self.eval_metrics,
            "sharding": self.sharding,
        }
        self.out_dir.mkdir(parents=True, exist_ok=True)
        (self.out_dir / f"rank{trainer.global_rank}.json").write_text(json.dumps(record))
