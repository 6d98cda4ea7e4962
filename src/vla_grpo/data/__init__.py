"""Demonstration data for SFT: windows of demo steps, augmentation, the DataModule."""
from __future__ import annotations

from vla_grpo.data.augment import color_jitter, random_shift
from vla_grpo.data.module import DemoDataModule, model_links
from vla_grpo.data.windows import PAD_KEY, DemoWindows, chunk_demos

__all__ = ["PAD_KEY", "DemoDataModule", "DemoWindows", "chunk_demos", "color_jitter", "model_links",
           "random_shift"]
