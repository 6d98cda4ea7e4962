"""LIBERO's 20 Hz control step computed as robosuite's ``env.step`` computes it, without its repeated work.

robosuite 1.4's ``MujocoEnv.step`` runs, on each of the 25 physics substeps of a
control step, ``mj_forward``, the robot's controller (whose ``update()`` calls
``mj_forward`` again, then looks every MuJoCo id up by name and copies the full
``nv x nv`` mass matrix) and ``mj_step`` (a third forward pass, then the
integrator): three forward passes where the physics needs one. After the
substeps it evaluates LIBERO's goal predicates twice (``reward`` and LIBERO's
``step``), gathers the observables and fills the robot's history buffers
(``recent_qpos``, ``recent_ee_acc``...: LIBERO reads none), none of
which a :class:`.sim.LiberoSim` reads.

Here each substep is MuJoCo's documented split of ``mj_step``: ``mj_step1``
(positions and velocities: everything the controller reads), the controller,
then ``mj_step2`` (actuation, constraints, integration), which for the Euler
integrator robosuite uses is ``mj_step`` exactly. The controller's arithmetic
is robosuite's own (``set_goal``, ``run_controller``, the gripper's
``format_action``); only the state its ``update()`` would fetch is handed to it
directly, from the same MuJoCo calls, so the trajectory is robosuite's to the
bit (``tests/test_libero_speed.py``). LIBERO's per-step object-state hook
(``_post_process``: stoves, lights) still runs every step.
"""
from __future__ import annotations

import mujoco
import numpy as np


class UnsupportedControl(ValueError):
    """The robosuite env is not the single-arm, fixed-impedance OSC setup this step reproduces."""


class FastControlStep:
    """``step(action)`` advances a LIBERO robosuite env as its ``env.step(action)`` would, minus unused work.

    Args:
        env: the robosuite environment under LIBERO's ``ControlEnv`` (``control_env.env``).

    Raises:
        UnsupportedControl: when the env's controller is not what LIBERO runs (one arm,
            OSC with fixed impedance and no interpolators, Euler integration).
    """

    def __init__(self, env) -> None:
        self.env = env
        model: mujoco.MjModel = env.sim.model._model
        self.model, self.data = model, env.sim.data._data
        self._check(env, model)
        robot = env.robots[0]
        self.robot, ctrl = robot, robot.controller  # robosuite makes a new controller at every reset: read it per step
        self._site = int(model.site(ctrl.eef_name).id)
        self._qpos = np.asarray(ctrl.qpos_index)
        self._qvel = np.asarray(ctrl.qvel_index)
        self._arm_actuators = np.asarray(robot._ref_joint_actuator_indexes)
        self._torque_low, self._torque_high = robot.torque_limits  # the model's ctrlrange: fixed
        grip = np.array([model.actuator(a).id for a in robot.gripper.actuators])
        crange = model.actuator_ctrlrange[grip]
        self._grip_actuators = grip
        self._grip_bias = 0.5 * (crange[:, 1] + crange[:, 0])
        self._grip_weight = 0.5 * (crange[:, 1] - crange[:, 0])
        self._control_dim = ctrl.control_dim
        self._substeps = int(env.control_timestep / env.model_timestep)
        self._jacp = np.zeros((3, model.nv))
        self._jacr = np.zeros((3, model.nv))
        self._full_mass = np.zeros((model.nv, model.nv))

    @staticmethod
    def _check(env, model: mujoco.MjModel) -> None:
        robots = env.robots
        ctrl = robots[0].controller if len(robots) == 1 else None
        ok = (ctrl is not None and type(ctrl).__name__ == "OperationalSpaceController"
              and ctrl.impedance_mode == "fixed" and ctrl.interpolator_pos is None and ctrl.interpolator_ori is None
              and robots[0].has_gripper and model.opt.integrator == mujoco.mjtIntegrator.mjINT_EULER)
        if not ok:
            raise UnsupportedControl("FastControlStep reproduces one arm under fixed-impedance OSC without "
                                     "interpolators and Euler integration (LIBERO's setup); use env.step")

    def step(self, action: np.ndarray) -> None:
        """One control step: ``action`` is the robot's 7-D OSC_POSE delta + gripper command."""
        env, model, data = self.env, self.model, self.data
        env.timestep += 1
        for i in range(self._substeps):
            mujoco.mj_step1(model, data)
            self._control(action, policy_step=i == 0)
            mujoco.mj_step2(model, data)
        env.cur_time += env.control_timestep
        env._post_process()  # LIBERO's object-state hook, as its _post_action runs it

    def _control(self, action: np.ndarray, policy_step: bool) -> None:
        """robosuite's ``SingleArm.control`` for one substep (its arithmetic, the state fed directly)."""
        ctrl = self.robot.controller
        # as its update(), only when re-armed: after reset + set_init_state robosuite's first substep
        # still uses the state its reset read (then set_goal and the torques start from it)
        if ctrl.new_update:
            self._fill_controller_state(ctrl)
        arm_action = action[: self._control_dim]
        if policy_step:
            ctrl.set_goal(arm_action)
        torques = np.clip(ctrl.run_controller(), self._torque_low, self._torque_high)
        grip = self.robot.gripper.format_action(action[self._control_dim :])
        self.data.ctrl[self._grip_actuators] = self._grip_bias + self._grip_weight * grip
        self.data.ctrl[self._arm_actuators] = torques
        self.robot.torques = torques

    def _fill_controller_state(self, ctrl) -> None:
        """What robosuite's ``Controller.update()`` reads after its ``mj_forward``, computed the same way.

        The same MuJoCo calls and the same numpy products (velocities as the full
        ``(3, nv)`` Jacobian times ``qvel``) keep the values identical to robosuite's.
        """
        model, data = self.model, self.data
        jacp, jacr = self._jacp, self._jacr
        mujoco.mj_jacSite(model, data, jacp, jacr, self._site)
        ctrl.ee_pos = data.site_xpos[self._site].copy()
        ctrl.ee_ori_mat = data.site_xmat[self._site].reshape(3, 3).copy()
        ctrl.ee_pos_vel = np.dot(jacp, data.qvel)
        ctrl.ee_ori_vel = np.dot(jacr, data.qvel)
        ctrl.joint_pos = data.qpos[self._qpos]
        ctrl.joint_vel = data.qvel[self._qvel]
        ctrl.J_pos = jacp[:, self._qvel]
        ctrl.J_ori = jacr[:, self._qvel]
        ctrl.J_full = np.vstack([ctrl.J_pos, ctrl.J_ori])
        mujoco.mj_fullM(model, self._full_mass, data.qM)
        ctrl.mass_matrix = self._full_mass[self._qvel, :][:, self._qvel]
        ctrl.new_update = False
