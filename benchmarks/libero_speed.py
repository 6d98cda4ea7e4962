"""LIBERO env-steps/s per core: our env (one frame per decision) beside the plain LIBERO loop, one run.

The plain loop is how the paper's code (and TorchRL's ``LiberoEnv``) steps
LIBERO: one ``OffScreenRenderEnv`` per task at the given camera size, every
control step renders its cameras and computes every observable, episodes reset
with ``env.reset()`` + ``env.set_init_state(...)``. Ours is
``LiberoSuite.make_env(1, chunk_size=H)``: H control steps per decision, one
frame. Both take uniform random actions, run episodes to the suite's step limit
over the same tasks and fixed initial states, and count resets in their time.

    python benchmarks/env_speed.py --suite libero                       # libero_spatial tasks 0,1
    python benchmarks/env_speed.py --suite libero --libero-suite libero_goal --tasks 0 --seconds 60
"""
from __future__ import annotations

import contextlib
import io
import time

import numpy as np
import torch
from tensordict import TensorDict

TARGET_RATIO = 5.0


def run_ours(suite, chunk: int, seconds: float) -> dict[str, float]:
    """Step our env with random chunks; episodes cycle over the suite's tasks and states 0, 1, ..."""
    rng = np.random.default_rng(0)
    env = suite.make_env(1, chunk_size=chunk)
    episode, steps, frames = 0, 0, 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        task = episode % len(suite.all_tasks())
        td = env.reset(TensorDict({"task_index": torch.tensor([[task]]),
                                   "init_state_id": torch.tensor([[episode // len(suite.all_tasks())]]),
                                   "group_id": torch.zeros(1, 1, dtype=torch.int64)}, batch_size=[1]))
        frames += 1
        while not bool(td["done"]) and time.perf_counter() - start < seconds:
            before = env.sims[0].steps
            td["action"] = torch.from_numpy(rng.uniform(-1, 1, (1, chunk, 7)).astype(np.float32))
            td = env.step(td)["next"]
            steps += env.sims[0].steps - before
            frames += 1
        episode += 1
    elapsed = time.perf_counter() - start
    env.close()
    return {"steps": steps, "frames": frames, "seconds": elapsed, "episodes": episode}


def run_plain(suite_name: str, tasks: list[int], image_size: int, max_steps: int, seconds: float,
              wrist: bool) -> dict[str, float]:
    """LIBERO's own loop: ``OffScreenRenderEnv`` per task, a frame on every control step."""
    from libero.libero import benchmark
    from libero.libero.envs import OffScreenRenderEnv

    with contextlib.redirect_stdout(io.StringIO()):
        bench = benchmark.get_benchmark_dict()[suite_name]()
    cameras = ["agentview", "robot0_eye_in_hand"] if wrist else ["agentview"]
    envs = {t: OffScreenRenderEnv(bddl_file_name=bench.get_task_bddl_file_path(t), camera_heights=image_size,
                                  camera_widths=image_size, camera_names=cameras) for t in tasks}
    inits = {t: bench.get_task_init_states(t) for t in tasks}
    rng = np.random.default_rng(0)
    episode, steps = 0, 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        task = tasks[episode % len(tasks)]
        env = envs[task]
        env.reset()
        env.set_init_state(inits[task][episode // len(tasks)])
        for _ in range(max_steps):
            obs, _, done, _ = env.step(rng.uniform(-1, 1, 7))
            steps += 1
            if done or time.perf_counter() - start >= seconds:
                break
        episode += 1
    elapsed = time.perf_counter() - start
    assert obs["agentview_image"].shape == (image_size, image_size, 3)
    for env in envs.values():
        env.close()
    return {"steps": steps, "frames": steps, "seconds": elapsed, "episodes": episode}


def compare(suite_name: str, tasks: list[int], image_size: int, chunk: int, seconds: float, wrist: bool) -> None:
    """Run both loops on ``tasks`` of ``suite_name`` for ``seconds`` each and print the ratio."""
    from vla_grpo.envs.libero import LiberoSuite

    suite = LiberoSuite(suite_name, unseen=[], task_ids=tasks, image_size=image_size, wrist_camera=wrist)
    run_ours(suite, chunk, min(5.0, seconds / 4))  # warm-up: simulators built, GL contexts and textures up
    ours = run_ours(suite, chunk, seconds)
    plain = run_plain(suite_name, tasks, image_size, suite.all_tasks()[0].max_steps, seconds, wrist)
    cams = "2 cameras" if wrist else "1 camera"
    print(f"{suite_name} tasks {tasks}, {image_size} px, {cams}, random actions, single process")
    rates = {}
    for label, r, note in (("ours", ours, f"chunk {chunk}, one frame per decision"),
                           ("plain LIBERO", plain, "OffScreenRenderEnv, a frame every step")):
        rates[label] = r["steps"] / r["seconds"]
        print(f"  {label:13s}: {rates[label]:7.1f} env-steps/s  {r['frames'] / r['seconds']:6.1f} frames/s  "
              f"({r['steps']} steps, {r['episodes']} episodes, {r['seconds']:.0f} s; {note})")
    ratio = rates["ours"] / rates["plain LIBERO"]
    print(f"  ratio        : {ratio:.1f}x  (target >= {TARGET_RATIO:.0f}x: "
          f"{'OK' if ratio >= TARGET_RATIO else 'MISSED'})")
