"""The tabletop suite: task catalogue (with the optional pretraining catalogue), env factory, scripted experts."""
from __future__ import annotations

from dataclasses import replace

from ..scene.suite import SceneSuite
from .catalogue import pretrain_tasks
from .env import TabletopEnv
from .expert import TabletopExpert
from .sim import STATE_DIM
from .tasks import SPREADS, TabletopTask, build_catalogue


class TabletopSuite(SceneSuite):
    """LIBERO-style tabletop tasks on a small MuJoCo scene with a mocap gripper.

    27 tasks in three families (spatial / object / goal), six seen (``train``)
    and three held-out per family (``unseen_spatial``, ``unseen_object``,
    ``unseen_goal``), each with ``num_init_states`` seeded initial states.
    Actions are 7-D: delta tool position (x, y, z), rotation (ignored: the hand
    stays top-down), gripper (> 0 closes); each is in ``[-1, 1]``.

    Args:
        image_size: side of the square camera images.
        wrist_camera: also render ``("observation", "wrist_image")``.
        num_init_states: initial states per task (ids ``0 .. n-1``).
        spread: how much initial states vary. ``"narrow"`` (LIBERO-like): one
            fixed scene per task, objects moved by up to 1.5 cm and turned by
            up to 0.15 rad. ``"wide"``: every state drawn from the full layout
            sampler (mirrored scenes, scattered groceries, shuffled lanes);
            its name, and so its demo cache files, is ``tabletop-wide``.
        seen_per_family: keep only the first that many seen tasks of each family
            (a smaller ``train`` split for short CPU runs; the unseen splits stay
            whole); the name gets ``-<k>seen`` so demo caches don't mix.
        pretrain_catalogue: add the ``pretrain`` split, 124 tasks composed from
            the suite's parts (:mod:`.catalogue`) for multi-task pretraining; the
            name gets ``-pretrain``.

    Example:
        >>> suite = TabletopSuite()
        >>> env = suite.make_env(2, chunk_size=8)
        >>> prompts = TensorDict({"task_index": torch.tensor([[0], [0]]),
        ...                       "init_state_id": torch.tensor([[3], [3]]),
        ...                       "group_id": torch.tensor([[1], [1]])}, batch_size=[2])
        >>> td = env.reset(prompts)
        >>> td["action"] = env.expert_chunk()  # or a policy's [2, 8, 7] chunk
        >>> td = env.step(td)["next"]
    """

    name = "tabletop"
    action_dim = 7
    state_dim = STATE_DIM
    env_class = TabletopEnv
    expert_class = TabletopExpert

    def __init__(
        self, image_size: int = 128, wrist_camera: bool = False, num_init_states: int = 50, spread: str = "narrow",
        seen_per_family: int | None = None, pretrain_catalogue: bool = False,
    ) -> None:
        self._init_sizes(image_size, num_init_states)
        self.wrist_camera = bool(wrist_camera)
        if spread not in SPREADS:
            raise ValueError(f"`spread` must be one of {SPREADS} (got {spread!r})")
        if seen_per_family is not None and not 1 <= seen_per_family <= 6:
            raise ValueError(f"`seen_per_family` must be in 1..6 (got {seen_per_family})")
        self.spread = spread
        self.seen_per_family = seen_per_family
        self.name = "tabletop" if spread == "narrow" else f"tabletop-{spread}"
        if seen_per_family is not None and seen_per_family < 6:  # 6 per family is the whole seen split
            self.name += f"-{seen_per_family}seen"
        self.pretrain_catalogue = bool(pretrain_catalogue)
        if pretrain_catalogue:
            self.name += "-pretrain"
        self._tasks: list[TabletopTask] = build_catalogue(self.num_init_states, spread, seen_per_family)
        if self.pretrain_catalogue:  # after the suite's own tasks, so their indices stay
            self._tasks += [replace(t, spread=spread) for t in pretrain_tasks(self.num_init_states)]

    def __repr__(self) -> str:
        return (f"TabletopSuite(image_size={self.image_size}, wrist_camera={self.wrist_camera}, "
                f"num_init_states={self.num_init_states}, spread={self.spread!r}, "
                f"seen_per_family={self.seen_per_family}, pretrain_catalogue={self.pretrain_catalogue}, "
                f"tasks={len(self._tasks)})")
