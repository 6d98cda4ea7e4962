"""The LIBERO suite: one LIBERO suite's tasks as ``train``, its LIBERO-PRO variants as unseen splits."""
from __future__ import annotations

from dataclasses import dataclass

from ..base import TRAIN_SPLIT, Suite, TaskSpec

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


class LiberoSuite(Suite):
    """LIBERO (Spatial / Object / Goal / 10 / 90) with its LIBERO-PRO perturbations as unseen splits.

    The chosen suite's tasks are the ``train`` split; each LIBERO-PRO variant of
    them is a held-out split named after its benchmark (``libero_spatial_lan``:
    reworded instructions, ``_object``: new object appearances, ``_swap``:
    swapped positions, ``_task``: a new task in the same scene). Initial states
    are LIBERO's 50 fixed ones per task; success is LIBERO's own goal
    predicates; step limits are OpenVLA-OFT's (after 10 settling steps). Actions
    are LIBERO's 7-D OSC_POSE deltas in ``[-1, 1]`` (gripper > 0 closes); the state
    is OpenVLA-OFT's 8-D proprio; one ``agentview`` frame (and optionally the
    wrist camera) is rendered per policy decision.

    Args:
        suite: ``libero_spatial``, ``libero_object``, ``libero_goal``, ``libero_10`` or ``libero_90``.
        unseen: LIBERO-PRO variants to add as held-out splits (of ``lan``, ``object``, ``swap``, ``task``).
        task_ids: keep only these task indices of the suite (and of each variant), e.g. ``[0, 1]``.
        image_size: side of the square camera images.
        wrist_camera: also render ``("observation", "wrist_image")``.
        num_init_states: use only the first that many fixed states per task (``None``: all 50).
        max_sims: LIBERO simulators one env keeps at most (each holds its scene's ~200 MB of
            textures and meshes); ``None``: twice its sub-envs.
    """

    action_dim = 7
    state_dim = STATE_DIM

    def __init__(self, suite: str = "libero_spatial", unseen: list[str] | None = None,
                 task_ids: list[int] | None = None, image_size: int = 128, wrist_camera: bool = False,
                 num_init_states: int | None = None, max_sims: int | None = None) -> None:
        if suite not in MAX_STEPS:
            raise ValueError(f"unknown LIBERO suite {suite!r}; expected one of {sorted(MAX_STEPS)}")
        unseen = list(PRO_VARIANTS if unseen is None else unseen)
        bad = [v for v in unseen if v not in PRO_VARIANTS]
        if bad or (unseen and suite == "libero_90"):
            raise ValueError(f"`unseen` {unseen} invalid for {suite}; expected a subset of {list(PRO_VARIANTS)} "
                             "(libero_90 has no LIBERO-PRO variants)")
        if image_size < 16:
            raise ValueError(f"`image_size` must be >= 16 (got {image_size})")
        if num_init_states is not None and num_init_states < 1:
            raise ValueError(f"`num_init_states` must be >= 1 or null (got {num_init_states})")
        self.suite, self.unseen = suite, tuple(unseen)
        self.task_ids = None if task_ids is None else tuple(int(i) for i in task_ids)
        self.image_size, self.wrist_camera = int(image_size), bool(wrist_camera)
        self.num_init_states, self.max_sims = num_init_states, max_sims
        self.name = suite if self.task_ids is None else f"{suite}-" + "_".join(map(str, self.task_ids))
        self._tasks = build_catalogue(suite, self.unseen, self.task_ids, num_init_states)
        self._experts: dict = {}

    def all_tasks(self) -> list[TaskSpec]:
        return [t.spec for t in self._tasks]

    def task(self, task_index: int) -> LiberoTask:
        """The LIBERO task behind ``all_tasks()[task_index]`` (benchmark, index, BDDL file)."""
        return self._tasks[task_index]

    def make_env(self, num_envs: int, *, chunk_size: int, seed: int = 0):
        from .env import LiberoBatchEnv

        return LiberoBatchEnv(self, num_envs=num_envs, chunk_size=chunk_size, seed=seed)

    def expert(self, task_index: int):
        """Scripted expert of a task: ``expert(sim, chunk_size) -> [H, 7]`` actions (see :mod:`.expert`)."""
        expert = self._experts.get(task_index)
        if expert is None:
            from .expert import LiberoExpert

            expert = self._experts[task_index] = LiberoExpert(self._tasks[task_index])
        return expert

    def __repr__(self) -> str:
        return (f"LiberoSuite(suite={self.suite!r}, unseen={list(self.unseen)}, task_ids={self.task_ids}, "
                f"image_size={self.image_size}, wrist_camera={self.wrist_camera}, tasks={len(self._tasks)})")
