"""The bimanual suite: task catalogue, env factory, scripted experts."""
from __future__ import annotations

from ..base import Suite, TaskSpec
from .env import BimanualEnv
from .expert import BimanualExpert
from .sim import STATE_DIM
from .tasks import BimanualTask, build_catalogue


class BimanualSuite(Suite):
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
    wrist_camera = False  # one agent-view camera (the env reads this)

    def __init__(self, image_size: int = 128, num_init_states: int = 50) -> None:
        if image_size < 16:
            raise ValueError(f"`image_size` must be >= 16 (got {image_size})")
        if num_init_states < 1:
            raise ValueError(f"`num_init_states` must be >= 1 (got {num_init_states})")
        self.image_size = int(image_size)
        self.num_init_states = int(num_init_states)
        self._tasks = build_catalogue(self.num_init_states)
        self._experts: dict[int, BimanualExpert] = {}

    def all_tasks(self) -> list[TaskSpec]:
        return [t.spec for t in self._tasks]

    def task(self, task_index: int) -> BimanualTask:
        """The full task (scene, goal, layout) behind ``all_tasks()[task_index]``."""
        return self._tasks[task_index]

    def make_env(self, num_envs: int, *, chunk_size: int, seed: int = 0) -> BimanualEnv:
        return BimanualEnv(self, num_envs=num_envs, chunk_size=chunk_size, seed=seed)

    def expert(self, task_index: int) -> BimanualExpert:
        """Scripted expert of a task: ``expert(sim, chunk_size) -> [H, 14]`` actions (``env.expert_chunk()``)."""
        expert = self._experts.get(task_index)
        if expert is None:
            expert = self._experts[task_index] = BimanualExpert(self._tasks[task_index])
        return expert

    def __repr__(self) -> str:
        return (f"BimanualSuite(image_size={self.image_size}, num_init_states={self.num_init_states}, "
                f"tasks={len(self._tasks)})")
