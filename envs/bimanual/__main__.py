"""Print the bimanual scripted experts' success per task.

    python -m vla_grpo.envs.bimanual                 # all 20 tasks, all 50 states, chunk 8
    python -m vla_grpo.envs.bimanual --states 20 --chunk-size 1
    python -m vla_grpo.envs.bimanual --pretrain --states 10   # the pretraining catalogue's tasks
"""
from __future__ import annotations

from ..scene.evaluate import expert_report_main
from .suite import BimanualSuite


def main(argv: list[str] | None = None) -> None:
    expert_report_main(lambda pretrain: BimanualSuite(image_size=64, pretrain_catalogue=pretrain), argv,
                       description="Scripted-expert success per bimanual task.", num_envs=20)


if __name__ == "__main__":
    main()
