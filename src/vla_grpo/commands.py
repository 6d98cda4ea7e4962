"""The subcommands of ``python -m vla_grpo`` beside LightningCLI's ``fit``/``validate``/``test``.

``COMMANDS`` maps a name to the function that runs it on the remaining
arguments; :func:`vla_grpo.cli.main` hands every other command line to
LightningCLI. Each one imports its module when run, so ``fit`` loads none of them.
"""
from __future__ import annotations

from collections.abc import Callable


def demos(argv: list[str]) -> None:
    """``python -m vla_grpo demos ...``: write scripted-expert demos (:mod:`vla_grpo.envs.demos`)."""
    from vla_grpo.envs.demos import main

    main(argv)


def doctor(argv: list[str]) -> None:
    """``python -m vla_grpo doctor``: check rendering, simulator workers, LIBERO, torch devices (:mod:`vla_grpo.doctor`)."""
    from vla_grpo.doctor import main

    main(argv)


#: subcommand -> its runner, given the arguments after the subcommand
COMMANDS: dict[str, Callable[[list[str]], None]] = {"demos": demos, "doctor": doctor}

__all__ = ["COMMANDS", "demos", "doctor"]
