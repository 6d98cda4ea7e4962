"""The bimanual suite: task catalogue, env factory, scripted experts."""
from __future__ import annotations

from ..scene.suite import SceneSuite
from .catalogue import pretrain_tasks
from .env import BimanualEnv
from .expert import BimanualExpert
from .sim import STATE_DIM
from .tasks import BimanualTask, build_catalogue


class BimanualSuite(SceneSuite):
    """RoboTwin-2.0-style two-arm tasks on a small MuJoCo scene with two top-down grippers.

    Ten tasks over RoboTwin's short / medium / long horizons (the task
    ``family``), each seen (``train``) and in an ``unseen`` variant with new
    object colours and positions; ``num_init_states`` seeded initial states each.
    Actions are 14-D, ``[left 7 | right 7]``: delta tool position (x, y, z),
    rotation (ignored: hands stay top-down), gripper (> 0 closes), all in
    ``[-1, 1]``. The state is both arms' proprio (16-D).

    Args:
        image_size: side of the square camera images.
        num_init_states: initial states per task (ids ``0 .. n-1``).
        pretrain_catalogue: add the ``pretrain`` split, two-arm tasks composed
            from the suite's parts (:mod:`.catalogue`) for multi-task
            pretraining, after the seen and unseen tasks; the name gets ``-pretrain``.

    Example:
        >>> suite = BimanualSuite(image_size=64)
        >>> env = suite.make_env(2, chunk_size=8)
        >>> td = env.reset(TensorDict({"task_index": torch.tensor([[0], [0]]),
        ...                            "init_state_id": torch.tensor([[3], [3]]),
        ...                            "group_id": torch.tensor([[1], [1]])}, batch_size=[2]))
        >>> td["action"] = env.expert_chunk()  # or a policy's [2, 8, 14] chunk
        >>> td = env.step(td)["next"]
    """

    name = "bimanual"
    action_dim = 14
    state_dim = STATE_DIM
    env_class = BimanualEnv
    expert_class = BimanualExpert
    wrist_camera = False  # one agent-view camera (the env reads this)

    def __init__(self, image_size: int = 128, num_init_states: int = 50, pretrain_catalogue: bool = False) -> None:
        self._init_sizes(image_size, num_init_states)
        self._tasks: list[BimanualTask] = build_catalogue(self.num_init_states)
        self.pretrain_catalogue = bool(pretrain_catalogue)
        self.name = "bimanual-pretrain" if pretrain_catalogue else "bimanual"
        if pretrain_catalogue:
            self._tasks += pretrain_tasks(self.num_init_states)

    def __repr__(self) -> str:
        return (f"BimanualSuite(image_size={self.image_size}, num_init_states={self.num_init_states}, "
                f"pretrain_catalogue={self.pretrain_catalogue}, tasks={len(self._tasks)})")
