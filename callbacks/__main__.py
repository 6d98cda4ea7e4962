"""``python -m vla_grpo.callbacks CSV PNG``: redraw an eval plot from ``eval_per_task.csv``."""
from __future__ import annotations

from .report import main

main()
