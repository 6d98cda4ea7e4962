"""Trajectory groups: dynamic sampling, group advantages, held surplus and the instructions of
popped groups (``vla_grpo.groups.DynamicSamplingBuffer``)."""
from __future__ import annotations

import pytest
import torch

from tests.helpers import make_trajectory
from vla_grpo.groups import DynamicSamplingBuffer
from vla_grpo.keys import GROUP_ID_KEY


def test_only_mixed_groups_reach_the_buffer_and_surplus_is_kept():
    buf = DynamicSamplingBuffer(group_size=4)
    outcomes = {0: [0, 0, 0, 0], 1: [1, 1, 1, 1], 2: [0, 1, 0, 0], 3: [1, 1, 0, 1]}
    tid = 0
    for gid, succ in outcomes.items():
        for s in succ:
            buf.extend([make_trajectory(group_id=gid, traj_id=tid, length=1 + tid % 3, success=bool(s))])
            tid += 1
    assert buf.num_groups == 2
    stats = buf.stats()
    assert stats["dropped_groups"] == 2 and stats["written_groups"] == 2
    first = buf.pop_groups(1)
    assert set(first[GROUP_ID_KEY].view(-1).tolist()) == {2}
    # advantages: (R - mean) / std with the unbiased std of [0, 1, 0, 0]
    expected = (torch.tensor([0.0, 1, 0, 0]) - 0.25) / torch.tensor([0.0, 1, 0, 0]).std()
    per_traj = [float(first[first["trajectory_id"].view(-1) == t]["advantage"][0]) for t in range(8, 12)]
    assert per_traj == pytest.approx(expected.tolist(), rel=1e-5)
    rest = buf.pop_groups(5)
    assert set(rest[GROUP_ID_KEY].view(-1).tolist()) == {3}
    assert buf.pop_groups(1) is None


def test_popped_groups_carry_their_instructions_and_dropped_ones_are_forgotten():
    buf = DynamicSamplingBuffer(group_size=2)
    asked = {0: "pick up the mug", 1: "lift the mug", 2: "push the plate to the front", 3: "push the plate forward"}
    outcomes = {0: (0, 0), 1: (1, 0)}  # group 0 is dropped (all fail), group 1 kept
    trajs = [make_trajectory(group_id=g, traj_id=2 * g + i, length=2, success=bool(r))
             for g, rs in outcomes.items() for i, r in enumerate(rs)]
    buf.extend(trajs, [asked[i] for i in range(4)])
    assert buf.num_groups == 1
    assert set(buf._instructions) == {2, 3}  # the dropped group's are gone already
    rows = buf.pop_groups(1)
    by_traj = dict(zip(rows["trajectory_id"].view(-1).tolist(), list(rows.get("language_instruction").tolist()), strict=True))
    assert by_traj == {2: asked[2], 3: asked[3]}
    assert not buf._instructions and not buf._open
