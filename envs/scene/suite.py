"""What the scene suites share: a built task catalogue, an env class, a cached scripted expert per task."""
from __future__ import annotations

from ..base import Suite, TaskSpec


class SceneSuite(Suite):
    """What the MuJoCo scene suites share: a built task catalogue, an env class, an expert per task.

    Subclasses set ``env_class`` and ``expert_class`` and fill ``self._tasks``
    (objects with a ``spec``) after :meth:`_init_sizes`.
    """

    env_class: type
    expert_class: type

    def _init_sizes(self, image_size: int, num_init_states: int) -> None:
        if image_size < 16:
            raise ValueError(f"`image_size` must be >= 16 (got {image_size})")
        if num_init_states < 1:
            raise ValueError(f"`num_init_states` must be >= 1 (got {num_init_states})")
        self.image_size = int(image_size)
        self.num_init_states = int(num_init_states)
        self._experts: dict = {}

    def all_tasks(self) -> list[TaskSpec]:
        return [t.spec for t in self._tasks]

    def task(self, task_index: int):
        """The full task (scene, goal, layout) behind ``all_tasks()[task_index]``."""
        return self._tasks[task_index]

    def make_env(self, num_envs: int, *, chunk_size: int, seed: int = 0):
        return self.env_class(self, num_envs=num_envs, chunk_size=chunk_size, seed=seed)

    def expert(self, task_index: int):
        """Scripted expert of a task: ``expert(sim, chunk_size) -> [H, action_dim]`` actions.

        ``sim`` is a sub-env simulator (``env.sims[i]``); ``env.expert_chunk()``
        applies the right expert to every sub-env.
        """
        expert = self._experts.get(task_index)
        if expert is None:
            expert = self._experts[task_index] = self.expert_class(self._tasks[task_index])
        return expert
