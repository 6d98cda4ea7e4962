"""LIBERO's tasks as ours: the task type, step limits and constants, and the catalogue of a suite and its PRO variants.

Only :func:`require_libero` and what calls it import LIBERO, when a catalogue is
built: this module imports without it.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..base import TRAIN_SPLIT, TaskSpec

#: LIBERO suites this wraps, with their step limits as OpenVLA-OFT's LIBERO eval sets them
#: (``run_libero_eval.py``: policy steps after the 10 settling steps)
MAX_STEPS = {"libero_spatial": 220, "libero_object": 280, "libero_goal": 300, "libero_10": 520, "libero_90": 400}
#: LIBERO-PRO perturbations this package ships both BDDL files and init states for (``_env``,
#: ``_semantic_ood``, ``_relation_ood`` and ``_temp`` are listed by its benchmark but have neither)
PRO_VARIANTS = ("lan", "object", "swap", "task")
#: the task family LIBERO's suites are named after (spatial / object / goal / long)
FAMILY = {"libero_spatial": "spatial", "libero_object": "object", "libero_goal": "goal", "libero_10": "long",
          "libero_90": "multi"}
#: policy-independent no-op steps after each reset, as OpenVLA-OFT (objects drop and settle)
NUM_STEPS_WAIT = 10
STATE_DIM = 8  # eef position, eef axis-angle, two finger joints (OpenVLA-OFT's LIBERO proprio)


def require_libero():
    """``libero.libero.benchmark``, or a one-line ImportError saying how to install it."""
    try:
        from libero.libero import benchmark
    except ImportError as err:
        raise ImportError(f"vla_grpo.envs.libero needs LIBERO: pip install -e '.[libero]' ({err})") from None
    return benchmark


def bddl_language(path: str) -> str:
    """The ``(:language ...)`` of a BDDL file, lower-cased (LIBERO-PRO rewrites it in ``_lan``/``_task``)."""
    from libero.libero.envs.bddl_utils import get_problem_info

    return " ".join(get_problem_info(path)["language_instruction"].split()).lower()


@dataclass(frozen=True)
class LiberoTask:
    """One LIBERO task: its spec, BDDL file and init-state file (plain data: pickled to workers).

    Attributes:
        spec: the task as the trainer sees it.
        benchmark: the LIBERO(-PRO) benchmark name (``libero_spatial``, ``libero_spatial_lan``).
        index: the task's index in that benchmark.
        bddl_file: path of the task's BDDL problem file.
    """

    spec: TaskSpec
    benchmark: str
    index: int
    bddl_file: str

    def init_states(self):
        """The benchmark's fixed initial states, ``[50, state_size]`` (``get_task_init_states``)."""
        return _benchmark(self.benchmark).get_task_init_states(self.index)


def _benchmark(name: str):
    bench = require_libero().get_benchmark_dict()
    if name not in bench:
        raise ValueError(f"unknown LIBERO benchmark {name!r}; expected one of {sorted(MAX_STEPS)}")
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):  # it prints its task order on every construction
        return bench[name]()


def build_catalogue(suite: str, unseen: tuple[str, ...], task_ids: tuple[int, ...] | None,
                    num_init_states: int | None) -> list[LiberoTask]:
    """The seen tasks of ``suite`` then, per variant, its LIBERO-PRO counterparts (same task order)."""
    seen = _benchmark(suite)
    ids = tuple(range(seen.n_tasks)) if task_ids is None else task_ids
    bad = [i for i in ids if not 0 <= i < seen.n_tasks]
    if bad:
        raise ValueError(f"`task_ids` {bad} out of range for {suite} ({seen.n_tasks} tasks)")
    out = []
    for split, name in [(TRAIN_SPLIT, suite)] + [(f"{suite}_{v}", f"{suite}_{v}") for v in unseen]:
        bench = seen if split == TRAIN_SPLIT else _benchmark(name)
        for i in ids:
            task = bench.get_task(i)
            path = bench.get_task_bddl_file_path(i)
            language = task.language  # OpenVLA's instruction: from the file name
            if split != TRAIN_SPLIT:  # the variant's own wording (only _lan and _task change it)
                own, original = bddl_language(path), bddl_language(seen.get_task_bddl_file_path(i))
                language = own if own != original else seen.get_task(i).language
            n = len(bench.get_task_init_states(i))
            spec = TaskSpec(name=f"{name}/{task.name}", instruction=language, split=split, family=FAMILY[suite],
                            max_steps=MAX_STEPS[suite], num_init_states=min(n, num_init_states or n))
            out.append(LiberoTask(spec, name, i, path))
    return out
