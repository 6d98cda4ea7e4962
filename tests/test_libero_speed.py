"""The fast LIBERO control step (vla_grpo.envs.libero.control) simulates what robosuite's ``env.step`` does.

Each case runs the scripted expert closed loop, one action at a time, on two
simulators of the same task, over two fixed states one after the other (the
second episode starts from a reset of the simulators the first one used, as
pooled simulators do: robosuite builds a new controller at every reset): one stepped by
:class:`~vla_grpo.envs.libero.control.FastControlStep`, one by robosuite's own
``env.step`` (``LiberoSim(reference_step=True)``, the step before it). Every
control step of the whole episode, qpos and qvel must agree to 1e-6 (they are
computed by the same operations, so they agree to the bit), and both episodes
succeed at the same step.

Builds LIBERO simulators: slow-marked, and skipped without ``pip install -e '.[libero]'``.
"""
from __future__ import annotations

import numpy as np
import pytest

from vla_grpo.envs.libero import LiberoSuite

NO_LIBERO = "LIBERO is not installed: pip install -e '.[libero]'"
STATE_TOL = 1e-6  # the bound on |qpos, qvel| over an expert episode


def _max_state_gap(a, b) -> float:
    return max(np.abs(a.data.qpos - b.data.qpos).max(), np.abs(a.data.qvel - b.data.qvel).max())


def _expert_episode(fast, ref, expert, state: int, max_steps: int) -> float:
    """One expert episode on both simulators from fixed state ``state``; the largest state gap on the way."""
    fast.reset(state)
    ref.reset(state)
    gaps = [_max_state_gap(fast, ref)]
    for _ in range(max_steps):
        fast.step(expert(fast, 1)[0])  # each expert reads its own simulator: equal states, equal actions
        ref.step(expert(ref, 1)[0])
        gaps.append(_max_state_gap(fast, ref))
        assert fast.success() == ref.success(), f"success differs at step {fast.steps} of state {state}"
        if ref.success():
            break
    assert ref.success() and fast.success(), f"the expert failed on state {state} ({ref.steps} steps)"
    assert fast.steps == ref.steps and 10 < ref.steps < max_steps
    if max(gaps) > STATE_TOL:
        first = next(i for i, g in enumerate(gaps) if g > STATE_TOL)
        raise AssertionError(f"state {state}: qpos/qvel gap {max(gaps):.3g} > {STATE_TOL} (first at step {first})")
    return max(gaps)


@pytest.mark.slow
@pytest.mark.parametrize("suite_name,task,states", [
    ("libero_spatial", "pick_up_the_black_bowl_between_the_plate_and_the_ramekin_and_place_it_on_the_plate", (0, 1)),
    ("libero_goal", "open_the_middle_drawer_of_the_cabinet", (5, 0)),  # the look-ahead (snapshot/restore) skill
    ("libero_goal", "turn_on_the_stove", (0, 2)),  # LIBERO's per-step object-state hook (the stove's flame)
])
def test_fast_step_trajectory_equals_robosuites_over_expert_episodes(suite_name, task, states):
    pytest.importorskip("libero.libero", reason=NO_LIBERO)
    from vla_grpo.envs.libero.control import FastControlStep
    from vla_grpo.envs.libero.sim import LiberoSim

    suite = LiberoSuite(suite_name, unseen=[], image_size=32)
    index = [t.name for t in suite.all_tasks()].index(f"{suite_name}/{task}")
    spec, expert = suite.task(index).spec, suite.expert(index)
    fast, ref = LiberoSim(suite.task(index)), LiberoSim(suite.task(index), reference_step=True)
    assert isinstance(fast._advance.__self__, FastControlStep) and not isinstance(ref._advance.__self__,
                                                                                     FastControlStep)
    try:
        for state in states:
            _expert_episode(fast, ref, expert, state, spec.max_steps)
    finally:
        fast.close()
        ref.close()


@pytest.mark.slow
def test_fast_step_refuses_a_controller_it_does_not_reproduce():
    """Anything but LIBERO's fixed-impedance OSC (here: variable impedance) is a one-line error, not a silent drift."""
    pytest.importorskip("libero.libero", reason=NO_LIBERO)
    from vla_grpo.envs.libero.control import FastControlStep, UnsupportedControl
    from vla_grpo.envs.libero.sim import LiberoSim

    suite = LiberoSuite("libero_spatial", unseen=[], task_ids=[0], image_size=32)
    sim = LiberoSim(suite.task(0), reference_step=True)
    try:
        sim.robot.controller.impedance_mode = "variable"
        with pytest.raises(UnsupportedControl, match="fixed-impedance OSC") as err:
            FastControlStep(sim.env.env)
        assert "\n" not in str(err.value)
    finally:
        sim.close()
