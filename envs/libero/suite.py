"""The LIBERO suite: one LIBERO suite's tasks as ``train``, its LIBERO-PRO variants as unseen splits."""
from __future__ import annotations

from ..scene.suite import SceneSuite
from .env import LiberoBatchEnv
from .expert import LiberoExpert
from .tasks import MAX_STEPS, PRO_VARIANTS, STATE_DIM, LiberoTask, build_catalogue


class LiberoSuite(SceneSuite):
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
    env_class = LiberoBatchEnv
    expert_class = LiberoExpert

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
        self._tasks: list[LiberoTask] = build_catalogue(suite, self.unseen, self.task_ids, num_init_states)
        self._experts: dict = {}  # the kit's expert cache (``num_init_states`` may be None: no _init_sizes)

    def __repr__(self) -> str:
        return (f"LiberoSuite(suite={self.suite!r}, unseen={list(self.unseen)}, task_ids={self.task_ids}, "
                f"image_size={self.image_size}, wrist_camera={self.wrist_camera}, tasks={len(self._tasks)})")
