"""``python -m vla_grpo.envs.libero``: the scripted experts' success per task over LIBERO's fixed states.

    python -m vla_grpo.envs.libero --suite libero_spatial --states 10 --chunk-size 1 --num-envs 1
    python -m vla_grpo.envs.libero --suite libero_goal --tasks libero_goal/turn_on_the_stove --states 3
"""
from __future__ import annotations

import argparse

from ..scene.evaluate import expert_report_main
from .suite import MAX_STEPS, LiberoSuite


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--suite", default="libero_spatial", choices=sorted(MAX_STEPS))
    parser.add_argument("--image-size", type=int, default=64)
    args, rest = parser.parse_known_args(argv)
    suite = LiberoSuite(args.suite, unseen=[], image_size=args.image_size)
    expert_report_main(lambda _: suite, rest, description=__doc__.splitlines()[0], num_envs=1, catalogue=False)


if __name__ == "__main__":
    main()
