"""Print the scripted experts' success per task.

    python -m vla_grpo.envs.tabletop                 # all tasks, all 50 states, chunk 8
    python -m vla_grpo.envs.tabletop --states 10 --chunk-size 1
    python -m vla_grpo.envs.tabletop --pretrain      # the pretraining catalogue's tasks
"""
from __future__ import annotations

from ..scene.evaluate import expert_report_main
from .suite import TabletopSuite


def main(argv: list[str] | None = None) -> None:
    expert_report_main(lambda pretrain: TabletopSuite(pretrain_catalogue=pretrain), argv,
                       description="Scripted-expert success per tabletop task.", num_envs=16)


if __name__ == "__main__":
    main()
