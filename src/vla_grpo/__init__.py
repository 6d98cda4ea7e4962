"""vla_grpo: RL post-training (SimpleVLA-RL GRPO) for VLA policies on PyTorch Lightning."""
from __future__ import annotations

__version__ = "0.1.0"
