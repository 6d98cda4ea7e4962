"""Demo windows: one (observation, action chunk, padding mask) training sample per demo step.

Action chunks come from TorchRL's ``ActionChunkTransform``: step ``t`` gets
``a[t], ..., a[t+H-1]``; steps past the episode's end repeat its last action
and are flagged in ``action_is_pad``, which SFT leaves out of the loss (their
tokens never reach the simulator: the episode ends on success).
"""
from __future__ import annotations

import numpy as np
import torch
from tensordict import NonTensorStack, TensorDict
from torch.utils.data import Dataset
from torchrl.envs import ActionChunkTransform

from vla_grpo.envs.demos import Demo
from vla_grpo.keys import (
    ACTION_CHUNK_KEY,
    IMAGE_KEY,
    INSTRUCTION_KEY,
    PAD_KEY,
    STATE_KEY,
    TASK_INDEX_KEY,
)


def chunk_demos(demos: list[Demo], chunk_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Action-chunk targets ``[N, H, A]`` and padding mask ``[N, H]`` of every demo step.

    The demos are laid end to end in one row with ``done`` on each last step, so
    ``ActionChunkTransform`` cuts the chunks at the episode boundaries.
    """
    actions = torch.from_numpy(np.concatenate([d.actions for d in demos])).float()
    done = torch.zeros(len(actions), dtype=torch.bool)
    done[np.cumsum([len(d) for d in demos]) - 1] = True
    row = TensorDict({"action": actions[None], ("next", "done"): done.view(1, -1, 1)},
                     batch_size=[1, len(actions)])
    row = ActionChunkTransform(chunk_size, chunk_key=ACTION_CHUNK_KEY, pad_key=PAD_KEY)(row)
    return row.get(ACTION_CHUNK_KEY)[0], row.get(PAD_KEY)[0]


class DemoWindows(Dataset):
    """One (observation, action chunk, padding mask) window per demo step.

    Everything lives in a few stacked tensors and a batch is gathered in one
    indexing call (``__getitems__``), not 64 small ones. Each time a window is
    served it is asked in one of its task's training phrasings, drawn uniformly
    with torch's global generator (seeded runs repeat).

    Args:
        demos: demonstrations (e.g. from :func:`vla_grpo.envs.demos.read_demos`).
        chunk_size: actions per window, the policy's ``chunk_size``.
        phrasings: each task name's training phrasings; a task not in it is asked
            as its demo file says.
    """

    def __init__(self, demos: list[Demo], chunk_size: int, phrasings: dict[str, tuple[str, ...]] | None = None) -> None:
        phrasings = phrasings or {}
        asked = {d.instruction: tuple(phrasings.get(d.task_name) or (d.instruction,)) for d in demos}
        self.instructions = sorted(asked)
        which = {s: i for i, s in enumerate(self.instructions)}
        #: the phrasings of each instruction id, padded by repetition to one width for one-call sampling
        width = max((len(v) for v in asked.values()), default=1)
        self.phrasings = [[asked[s][k % len(asked[s])] for k in range(width)] for s in self.instructions]
        self.num_phrasings = torch.tensor([len(asked[s]) for s in self.instructions] or [1])
        if demos:
            self.images = torch.from_numpy(np.concatenate([d.images for d in demos])).permute(0, 3, 1, 2)
            self.states = torch.from_numpy(np.concatenate([d.states for d in demos])).float()
            self.chunks, self.pad = chunk_demos(demos, chunk_size)
        else:
            self.images, self.states = torch.zeros(0, 3, 1, 1, dtype=torch.uint8), torch.zeros(0, 1)
            self.chunks, self.pad = torch.zeros(0, chunk_size, 1), torch.zeros(0, chunk_size, dtype=torch.bool)
        self.instruction_id = torch.tensor([which[d.instruction] for d in demos for _ in range(len(d))],
                                           dtype=torch.int64)
        self.task_index = torch.tensor([d.task_index for d in demos for _ in range(len(d))], dtype=torch.int64)

    def __len__(self) -> int:
        return len(self.chunks)

    def __getitems__(self, indices: list[int]) -> TensorDict:
        idx = torch.as_tensor(indices, dtype=torch.int64)
        return TensorDict(
            {
                IMAGE_KEY: self.images[idx],
                STATE_KEY: self.states[idx],
                INSTRUCTION_KEY: NonTensorStack(*self._ask(self.instruction_id[idx])),
                ACTION_CHUNK_KEY: self.chunks[idx],
                PAD_KEY: self.pad[idx],
                TASK_INDEX_KEY: self.task_index[idx],
            },
            batch_size=[len(idx)],
        )

    def _ask(self, instruction_id: torch.Tensor) -> list[str]:
        """One training phrasing per window, drawn uniformly among its task's."""
        pick = (torch.rand(len(instruction_id)) * self.num_phrasings[instruction_id]).long()
        return [self.phrasings[i][k] for i, k in zip(instruction_id.tolist(), pick.tolist(), strict=True)]

    def __getitem__(self, i: int) -> TensorDict:
        return self.__getitems__([i])[0]


def batch_is_ready(batch: TensorDict) -> TensorDict:
    """The DataLoader ``collate_fn`` of :class:`DemoWindows`: ``__getitems__`` already built the batch."""
    return batch


__all__ = ["PAD_KEY", "DemoWindows", "batch_is_ready", "chunk_demos"]
