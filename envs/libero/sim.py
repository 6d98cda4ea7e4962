"""One LIBERO task simulator, set up for speed: no robosuite cameras or observables, reset in place.

LIBERO's ``OffScreenRenderEnv`` (as the paper's code and TorchRL's ``LiberoEnv``
run it) renders two cameras and recomputes every robosuite observable (object
poses, relative poses, joint sin/cos...) on each of the 25 physics substeps of
a control step; that, not the physics, is most of its time. Here the same
LIBERO problem (its BDDL scene, OSC_POSE controller, ``check_success``) runs as
a ``ControlEnv`` without an offscreen renderer, with every observable disabled
(robosuite's own ``modify_observable``) and ``hard_reset=False`` (a reset
re-samples the scene in the loaded model instead of re-parsing and compiling
the XML, ~0.03 s instead of ~2 s); the env renders the frames itself, once per
decision (:mod:`.render`). A control step is :class:`.control.FastControlStep`:
robosuite's step (same controller arithmetic, same trajectory) without its
repeated forward passes and unused success checks. The state handed to the
policy is OpenVLA-OFT's LIBERO proprio, read straight from MuJoCo.
"""
from __future__ import annotations

import contextlib
import copy
import io

import mujoco
import numpy as np

from .control import FastControlStep
from .tasks import NUM_STEPS_WAIT, STATE_DIM, LiberoTask

#: the no-op LIBERO's evaluations send while objects settle: hold still, gripper open
WAIT_ACTION = np.array([0, 0, 0, 0, 0, 0, -1.0])


def quat_to_axis_angle(quat_wxyz: np.ndarray) -> np.ndarray:
    """Axis-angle vector of a (w, x, y, z) quaternion (robosuite's ``quat2axisangle``, MuJoCo's order)."""
    w = float(np.clip(quat_wxyz[0], -1.0, 1.0))
    den = np.sqrt(1.0 - w * w)
    if den < 1e-8:
        return np.zeros(3)
    return quat_wxyz[1:] * 2.0 * np.arccos(w) / den


class LiberoSim:
    """A LIBERO task's robosuite env, reset to the benchmark's fixed initial states.

    Args:
        task: the task (BDDL file, benchmark and index for the init states).
        cameras: MuJoCo camera names the env renders (``agentview`` and optionally the wrist camera).
        reference_step: step with robosuite's own ``env.step`` instead of :class:`.control.FastControlStep`
            (the same trajectory, ~2.5x slower a control step: for the equality test and the speed benchmark).
    """

    def __init__(self, task: LiberoTask, cameras: tuple[str, ...] = ("agentview",),
                 reference_step: bool = False) -> None:
        from libero.libero.envs.env_wrapper import ControlEnv

        self.task = task
        with contextlib.redirect_stdout(io.StringIO()):
            self.env = ControlEnv(bddl_file_name=task.bddl_file, has_offscreen_renderer=False, use_camera_obs=False,
                                  ignore_done=True, hard_reset=False, horizon=10**9)
        for name in self.env.env.observation_names:  # nothing of ours reads them; they cost ~85% of a step
            self.env.env.modify_observable(name, "enabled", False)
        self.init_states = task.init_states()
        self.model: mujoco.MjModel = self.env.sim.model._model
        self.data: mujoco.MjData = self.env.sim.data._data
        self.cameras = tuple(int(self.model.camera(c).id) for c in cameras)
        robot = self.env.robots[0]
        self.robot = robot
        self._eef_site = int(robot.eef_site_id)
        self._eef_body = int(self.model.body(robot.robot_model.eef_name).id)
        self._finger_qpos = [int(self.model.jnt_qposadr[self.model.joint(j).id]) for j in robot.gripper.joints]
        self.steps = 0
        self._success = False
        #: the scripted expert's per-episode memory (phase, grasp), cleared at reset
        self.expert_memory: dict = {}
        self._state_spec = mujoco.mjtState.mjSTATE_INTEGRATION
        self._advance = self.env.step if reference_step else FastControlStep(self.env.env).step

    # -- episode ---------------------------------------------------------
    def reset(self, init_state_id: int) -> None:
        """Fixed initial state ``init_state_id`` of the task, after LIBERO's settling steps.

        The scene sampler of ``env.reset()`` (which moves fixtures in the model)
        is seeded by the id, so a state always gives the same scene and frame.
        """
        if not 0 <= init_state_id < len(self.init_states):
            raise ValueError(f"init_state_id {init_state_id} out of range for {self.task.spec.name} "
                             f"({len(self.init_states)} fixed states)")
        rng = np.random.get_state()
        np.random.seed(init_state_id)  # robosuite's placement samplers draw from the global numpy RNG
        try:
            self.env.reset()
        finally:
            np.random.set_state(rng)
        self.robot.gripper.current_action = np.zeros_like(self.robot.gripper.current_action)
        self.env.set_init_state(self.init_states[init_state_id])
        for _ in range(NUM_STEPS_WAIT):
            self._advance(WAIT_ACTION)
        self.steps = 0
        self._success = bool(self.env.check_success())
        self.expert_memory = {}

    def snapshot(self) -> tuple:
        """Everything a control step reads and changes (MuJoCo's integration state, the gripper's
        command, the step count, the expert's memory), for :meth:`restore` after a look-ahead."""
        state = np.empty(mujoco.mj_stateSize(self.model, self._state_spec))
        mujoco.mj_getState(self.model, self.data, state, self._state_spec)
        return (state, self.robot.gripper.current_action.copy(), self.steps, self._success,
                copy.deepcopy(self.expert_memory))

    def restore(self, snap: tuple) -> None:
        state, grip, self.steps, self._success, memory = snap
        mujoco.mj_setState(self.model, self.data, state, self._state_spec)
        mujoco.mj_forward(self.model, self.data)
        self.robot.gripper.current_action = grip.copy()
        self.expert_memory = copy.deepcopy(memory)

    def step(self, action: np.ndarray) -> None:
        """One 20 Hz control step of LIBERO's OSC_POSE controller (25 physics substeps)."""
        self._advance(np.clip(np.asarray(action, dtype=np.float64), -1.0, 1.0))
        self.steps += 1
        self._success = None  # evaluated on demand: most steps only need it once

    def success(self) -> bool:
        """LIBERO's own goal predicates (``env.check_success()``) on the current state."""
        if self._success is None:
            self._success = bool(self.env.check_success())
        return self._success

    # -- state -----------------------------------------------------------
    def eef_pos(self) -> np.ndarray:
        return self.data.site_xpos[self._eef_site].copy()

    def eef_quat(self) -> np.ndarray:
        """End-effector orientation, (w, x, y, z)."""
        return self.data.xquat[self._eef_body].copy()

    def finger_qpos(self) -> np.ndarray:
        return self.data.qpos[self._finger_qpos].copy()

    def proprio(self) -> np.ndarray:
        """OpenVLA-OFT's LIBERO state: eef position, eef axis-angle, the two finger joints (8-D)."""
        out = np.empty(STATE_DIM, dtype=np.float32)
        out[:3] = self.eef_pos()
        out[3:6] = quat_to_axis_angle(self.eef_quat())
        out[6:] = self.finger_qpos()
        return out

    def object_pose(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """World position and (w, x, y, z) orientation of a BDDL object or fixture (privileged, for experts)."""
        body = self.env.env.obj_body_id[name]
        return self.data.xpos[body].copy(), self.data.xquat[body].copy()

    def close(self) -> None:
        self.env.close()
