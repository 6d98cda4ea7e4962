"""LIBERO env-steps/s per core: the fast step, today's step and the plain LIBERO loop side by side, one run.

Three loops on the same tasks, fixed initial states and uniform random actions,
episodes run to the suite's step limit, resets counted in their time:

- ``new``: ``LiberoSuite.make_env(1, chunk_size=H)``, stepped by
  :class:`vla_grpo.envs.libero.control.FastControlStep`; H control steps per decision, one frame;
- ``old``: the same env with robosuite's own ``env.step`` (``reference_step=True``: the step
  before ``FastControlStep``, the same trajectories);
- ``plain``: how the paper's code (and TorchRL's ``LiberoEnv``) steps LIBERO: one
  ``OffScreenRenderEnv`` per task at the camera size, every control step renders its
  cameras and computes every observable, ``env.reset()`` + ``env.set_init_state(...)``.

The loops take turns (``--rounds`` slices each), so a change in the machine's load
falls on all three; only the ratios mean something on a shared machine. Then the
profile: milliseconds per control step of ``new`` and ``old`` split into physics
(MuJoCo's forward/step calls), the OSC controller's Python, LIBERO's success
predicates, the rest of the control step (robosuite's bookkeeping, or ours), the
frame (per decision, divided by H) and the batched env around it (TensorDict, obs).

    python benchmarks/env_speed.py --suite libero                       # libero_spatial tasks 0,1; 64 and 128 px
    python benchmarks/env_speed.py --suite libero --libero-suite libero_goal --tasks 0 --seconds 60
"""
from __future__ import annotations

import contextlib
import io
import time
from collections import defaultdict

import numpy as np
import torch
from tensordict import TensorDict

TARGET_NEW_OVER_OLD = 1.5  # issue 31: the fast step, per core, at 64 and at 128 px


class OursLoop:
    """Our batched env (one sub-env) with random chunks; episodes cycle over the tasks and states 0, 1, ..."""

    def __init__(self, suite, chunk: int, reference_step: bool) -> None:
        from vla_grpo.envs.libero.env import LiberoBatchEnv

        self.suite, self.chunk = suite, chunk
        self.env = LiberoBatchEnv(suite, num_envs=1, chunk_size=chunk, reference_step=reference_step)
        self.rng = np.random.default_rng(0)
        self.episode, self.td = 0, None
        self.steps = self.frames = self.episodes = 0
        self.seconds = 0.0

    def reset(self) -> None:
        n = len(self.suite.all_tasks())
        self.td = self.env.reset(TensorDict({"task_index": torch.tensor([[self.episode % n]]),
                                             "init_state_id": torch.tensor([[self.episode // n]]),
                                             "group_id": torch.zeros(1, 1, dtype=torch.int64)}, batch_size=[1]))
        self.episode += 1
        self.frames += 1

    def decide(self) -> None:
        before = self.env.sims[0].steps
        self.td["action"] = torch.from_numpy(self.rng.uniform(-1, 1, (1, self.chunk, 7)).astype(np.float32))
        self.td = self.env.step(self.td)["next"]
        if self.td["observation", "image"].float().std() < 1.0:  # a blank frame is no frame
            raise RuntimeError("our env rendered a blank frame")
        self.steps += self.env.sims[0].steps - before
        self.frames += 1

    def clear(self) -> None:
        """Forget the counts (after a warm-up); the episode in progress goes on."""
        self.steps = self.frames = self.episodes = 0
        self.seconds = 0.0

    def run(self, seconds: float) -> None:
        start = time.perf_counter()
        while time.perf_counter() - start < seconds:
            if self.td is None or bool(self.td["done"]):
                self.reset()
                self.episodes += 1
            else:
                self.decide()
        self.seconds += time.perf_counter() - start

    def close(self) -> None:
        self.env.close()


class PlainLoop:
    """LIBERO's own loop: ``OffScreenRenderEnv`` per task, a frame on every control step."""

    def __init__(self, suite_name: str, tasks: list[int], image_size: int, max_steps: int, wrist: bool) -> None:
        from libero.libero import benchmark
        from libero.libero.envs import OffScreenRenderEnv

        with contextlib.redirect_stdout(io.StringIO()):
            bench = benchmark.get_benchmark_dict()[suite_name]()
        cameras = ["agentview", "robot0_eye_in_hand"] if wrist else ["agentview"]
        self.envs = [OffScreenRenderEnv(bddl_file_name=bench.get_task_bddl_file_path(t), camera_heights=image_size,
                                        camera_widths=image_size, camera_names=cameras) for t in tasks]
        self.inits = [bench.get_task_init_states(t) for t in tasks]
        self.image_size, self.max_steps = image_size, max_steps
        self.rng = np.random.default_rng(0)
        self.episode, self.t, self.env = 0, max_steps, None
        self.steps = self.episodes = 0
        self.seconds = 0.0

    @property
    def frames(self) -> int:
        return self.steps

    def clear(self) -> None:
        self.steps = self.episodes = 0
        self.seconds = 0.0

    def run(self, seconds: float) -> None:
        start = time.perf_counter()
        while time.perf_counter() - start < seconds:
            if self.t >= self.max_steps:
                k = self.episode % len(self.envs)
                self.env = self.envs[k]
                self.env.reset()
                self.env.set_init_state(self.inits[k][self.episode // len(self.envs)])
                self.episode, self.t = self.episode + 1, 0
                self.episodes += 1
            obs, _, done, _ = self.env.step(self.rng.uniform(-1, 1, 7))
            self.steps, self.t = self.steps + 1, self.max_steps if done else self.t + 1
            assert obs["agentview_image"].shape == (self.image_size, self.image_size, 3)
        self.seconds += time.perf_counter() - start

    def close(self) -> None:
        for env in self.envs:
            env.close()


def _plain_worker(conn, *args) -> None:
    """A :class:`PlainLoop` in its own process: robosuite's EGL renderer and ours disturb each other in one
    process (ours read back in ~0.1 ms, undrawn, once robosuite's context exists)."""
    loop = PlainLoop(*args)
    try:
        while (seconds := conn.recv()) is not None:
            if seconds == "clear":
                loop.clear()
            else:
                loop.run(seconds)
            conn.send((loop.steps, loop.episodes, loop.seconds))
    finally:
        loop.close()


class PlainProcess:
    """:class:`PlainLoop` driven from here, run in a child process that only works while this waits."""

    def __init__(self, *args) -> None:
        import multiprocessing as mp

        ctx = mp.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_plain_worker, args=(child, *args), daemon=True)
        self._proc.start()
        self.steps = self.episodes = 0
        self.seconds = 0.0

    @property
    def frames(self) -> int:
        return self.steps

    def _ask(self, message) -> None:
        self._conn.send(message)
        self.steps, self.episodes, self.seconds = self._conn.recv()

    def run(self, seconds: float) -> None:
        self._ask(seconds)

    def clear(self) -> None:
        self._ask("clear")

    def close(self) -> None:
        self._conn.send(None)
        self._proc.join(timeout=60)


# -- where a control step's time goes --------------------------------------------------
class Sections:
    """Exclusive wall time per named section: a wrapped call pauses the section it was called from."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self._stack: list[str] = []
        self._last = time.perf_counter()
        self._undo: list = []

    def _switch(self) -> None:
        now = time.perf_counter()
        if self._stack:
            self.seconds[self._stack[-1]] += now - self._last
        self._last = now

    def wrap(self, owner, attr: str, name: str) -> None:
        """Time every call of ``owner.attr`` as section ``name`` (undone by :meth:`undo`)."""
        fn = getattr(owner, attr)

        def timed(*args, **kwargs):
            self._switch()
            self._stack.append(name)
            try:
                return fn(*args, **kwargs)
            finally:
                self._switch()
                self._stack.pop()

        self._undo.append((owner, attr, owner.__dict__.get(attr, None) if hasattr(owner, "__dict__") else fn))
        setattr(owner, attr, timed)

    def undo(self) -> None:
        for owner, attr, before in reversed(self._undo):
            if before is None:
                delattr(owner, attr)
            else:
                setattr(owner, attr, before)
        self._undo = []


def profile_step(loop: OursLoop, decisions: int, sections: Sections) -> int:
    """Time ``decisions`` chunks of the episode in progress by section into ``sections``; the steps run."""
    import mujoco

    sim = loop.env.sims[0]
    stepper = getattr(sim._advance, "__self__", None)
    for fn in ("mj_forward", "mj_step", "mj_step1", "mj_step2"):  # robosuite and FastControlStep call them so
        sections.wrap(mujoco, fn, "physics")
    if type(stepper).__name__ == "FastControlStep":
        sections.wrap(stepper, "_control", "controller")
    else:
        sections.wrap(sim.robot, "control", "controller")
    sections.wrap(sim.env.env, "_check_success", "success")
    sections.wrap(sim, "_advance", "step rest")
    sections.wrap(loop.env, "_render", "render")
    sections.wrap(loop.env, "step", "env wrapper")
    steps0 = sim.steps
    try:
        for _ in range(decisions):
            loop.decide()
    finally:
        sections.undo()
    return sim.steps - steps0


def profile(loops: dict[str, OursLoop], decisions: int, rounds: int) -> dict[str, dict[str, float]]:
    """Milliseconds per control step by section of each loop, over one episode each, the loops taking turns."""
    sections = {k: Sections() for k in loops}
    steps = dict.fromkeys(loops, 0)
    for loop in loops.values():
        loop.reset()
    for _ in range(rounds):
        for k, loop in loops.items():
            steps[k] += profile_step(loop, decisions // rounds, sections[k])
    return {k: {part: 1e3 * v / steps[k] for part, v in sections[k].seconds.items()} for k in loops}


PARTS = ("physics", "controller", "success", "step rest", "render", "env wrapper")


def print_profile(rows: dict[str, dict[str, float]], chunk: int) -> None:
    print(f"  profile, ms per control step (frame once per {chunk}-step decision; exclusive times):")
    print("    " + f"{'':6s}" + "".join(f"{p:>12s}" for p in PARTS) + f"{'total':>9s}{'physics %':>11s}")
    for label, r in rows.items():
        total = sum(r.values())
        print("    " + f"{label:6s}" + "".join(f"{r.get(p, 0.0):12.2f}" for p in PARTS)
              + f"{total:9.2f}{100 * r.get('physics', 0.0) / total:10.0f}%")


# -- the comparison -------------------------------------------------------------------
def compare_size(suite_name: str, tasks: list[int], image_size: int, chunk: int, seconds: float, wrist: bool,
                 rounds: int = 3) -> dict[str, float]:
    """The three loops at one camera size, taking turns; prints rates, ratios and the profile."""
    from vla_grpo.envs.libero import LiberoSuite

    suite = LiberoSuite(suite_name, unseen=[], task_ids=tasks, image_size=image_size, wrist_camera=wrist)
    loops = {"new": OursLoop(suite, chunk, reference_step=False), "old": OursLoop(suite, chunk, reference_step=True),
             "plain": PlainProcess(suite_name, tasks, image_size, suite.all_tasks()[0].max_steps, wrist)}
    try:
        for loop in loops.values():  # warm-up: simulators built, GL contexts and textures up
            loop.run(min(3.0, seconds / 10))
            loop.clear()
        for _ in range(rounds):
            for loop in loops.values():
                loop.run(seconds / rounds)
        rates = {k: v.steps / v.seconds for k, v in loops.items()}
        print(f"{suite_name} tasks {tasks}, {image_size} px, {'2 cameras' if wrist else '1 camera'}, random actions, "
              f"single process, {rounds} turns of {seconds / rounds:.0f} s each")
        notes = {"new": f"FastControlStep, chunk {chunk}, a frame per decision",
                 "old": f"robosuite env.step, chunk {chunk}, a frame per decision",
                 "plain": "OffScreenRenderEnv, a frame every step"}
        for k, loop in loops.items():
            print(f"  {k:6s}: {rates[k]:7.1f} env-steps/s  {loop.frames / loop.seconds:6.1f} frames/s  "
                  f"({loop.steps} steps, {loop.episodes} episodes, {loop.seconds:.0f} s; {notes[k]})")
        ratios = {"new/old": rates["new"] / rates["old"], "new/plain": rates["new"] / rates["plain"],
                  "old/plain": rates["old"] / rates["plain"]}
        ok = "OK" if ratios["new/old"] >= TARGET_NEW_OVER_OLD else "MISSED"
        print("  ratios: " + ", ".join(f"{k} {v:.2f}x" for k, v in ratios.items())
              + f"   (new/old target >= {TARGET_NEW_OVER_OLD}x: {ok})")
        decisions = max(rounds, (suite.all_tasks()[0].max_steps - 1) // chunk)  # one episode, no reset in it
        print_profile(profile({k: loops[k] for k in ("new", "old")}, decisions, rounds), chunk)
        return ratios
    finally:
        for loop in loops.values():
            loop.close()


def compare(suite_name: str, tasks: list[int], image_sizes: list[int], chunk: int, seconds: float,
            wrist: bool, rounds: int = 3) -> None:
    """:func:`compare_size` at each camera size, in one run."""
    for size in image_sizes:
        compare_size(suite_name, tasks, size, chunk, seconds, wrist, rounds)
