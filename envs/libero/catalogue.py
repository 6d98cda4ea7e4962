"""The LIBERO base's pretraining catalogue: LIBERO-90 tasks the scripted expert solves, none of them a
task of the suites the base is tested on (LIBERO-Spatial, -Object, -Goal, -10) or of their LIBERO-PRO
variants.

LIBERO-90 shares scenes and objects with those suites by design (LIBERO-10's tasks are set in its
kitchens, living rooms and studies), so "never seen" is checked per task: no catalogue task may have
the instruction, the BDDL file, or the BDDL problem with its ``(:language ...)`` line removed (the same
task reworded) of a held-out one. Five LIBERO-90 tasks fail that check (e.g. ``KITCHEN_SCENE3``'s
"turn on the stove" is LIBERO-Goal-swap's instruction word for word).
"""
from __future__ import annotations

import re
from functools import lru_cache

from .tasks import PRO_VARIANTS, LiberoTask, build_catalogue

#: the suites a LIBERO base is evaluated on, each with all its LIBERO-PRO variants
HELD_OUT_SUITES = ("libero_spatial", "libero_object", "libero_goal", "libero_10")


def _problem(path: str) -> str:
    """A BDDL file's text without its ``(:language ...)`` line, whitespace normalised."""
    with open(path) as f:
        text = re.sub(r"\(:language[^)]*\)", "", f.read())
    return " ".join(text.split())


@lru_cache(maxsize=1)
def _held_out() -> tuple[dict[str, str], dict[str, str], dict[str, str]]:
    tasks = [t for s in HELD_OUT_SUITES for t in build_catalogue(s, PRO_VARIANTS, None, None)]
    instructions = {t.spec.instruction: t.spec.name for t in tasks}
    files = {open(t.bddl_file).read(): t.spec.name for t in tasks}
    problems = {_problem(t.bddl_file): t.spec.name for t in tasks}
    return instructions, files, problems


def held_out_twin(task: LiberoTask) -> str | None:
    """The held-out task (``libero_goal_swap/turn_on_the_stove``) that ``task`` equals by instruction,
    BDDL file or BDDL problem, or None."""
    instructions, files, problems = _held_out()
    return (instructions.get(task.spec.instruction) or files.get(open(task.bddl_file).read())
            or problems.get(_problem(task.bddl_file)))


def libero90_tasks() -> list[LiberoTask]:
    """LIBERO-90's 90 tasks, in its order (``task_ids`` of ``LiberoSuite("libero_90")`` index them)."""
    return build_catalogue("libero_90", (), None, None)
