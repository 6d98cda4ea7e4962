"""Throughput of a built-in MuJoCo suite (tabletop, bimanual or LIBERO), single process.

Runs the batched env with random action chunks (episodes run to their step
limit, finished sub-envs are reset with new prompts) and prints env-steps/s
(simulator control steps), frames/s (one frame per decision) and where the
time goes: physics, rendering, and the rest (TensorDict/obs/reset overhead).

    python benchmarks/env_speed.py                      # 128 px, chunk 8, 1 sub-env
    python benchmarks/env_speed.py --num-envs 8 --seconds 10
    python benchmarks/env_speed.py --image-size 224 --wrist-camera
    python benchmarks/env_speed.py --suite bimanual --image-size 64   # two arms, 14-D actions
    python benchmarks/env_speed.py --suite libero --seconds 30        # new vs old step vs plain LIBERO, 64 + 128 px

Target: >= 500 env-steps/s per core at the defaults (bimanual: >= 300). With
``--suite libero`` (needs ``pip install -e '.[libero]'``) it runs our LIBERO env
with the fast control step, the same env with robosuite's own step, and the
plain LIBERO loop (``OffScreenRenderEnv``, a frame every control step, as the
paper's code runs it) on the same tasks, taking turns in one run, at each of
``--image-sizes``, and prints their ratios and a per-step profile; see
:mod:`benchmarks.libero_speed`.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from tensordict import TensorDict

from vla_grpo.envs.tabletop import TabletopSuite

TARGETS = {"tabletop": 500, "bimanual": 300}  # env-steps/s per core


def _prompts(suite: TabletopSuite, n: int, rng: np.random.Generator) -> TensorDict:
    tasks = rng.integers(0, len(suite.all_tasks()), n)
    states = rng.integers(0, suite.num_init_states, n)
    return TensorDict(
        {"task_index": torch.as_tensor(tasks)[:, None], "init_state_id": torch.as_tensor(states)[:, None],
         "group_id": torch.zeros(n, 1, dtype=torch.int64)},
        batch_size=[n],
    )


def run_env(suite: TabletopSuite, num_envs: int, chunk: int, seconds: float) -> dict[str, float]:
    """Step the env with random chunks for ``seconds``; count control steps and frames."""
    rng = np.random.default_rng(0)
    env = suite.make_env(num_envs, chunk_size=chunk)
    td = env.reset(_prompts(suite, num_envs, rng))
    steps = frames = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        before = np.array([s.steps for s in env.sims])
        td["action"] = torch.rand(num_envs, chunk, suite.action_dim) * 2 - 1
        nxt = env.step(td)["next"]
        steps += int((np.array([s.steps for s in env.sims]) - before).sum())
        frames += num_envs
        done = nxt["done"].view(-1)
        td = nxt
        if done.any():
            reset = _prompts(suite, num_envs, rng)
            reset["_reset"] = done[:, None].clone()
            td = env.reset(reset)
            frames += int(done.sum())
    elapsed = time.perf_counter() - start
    env.close()
    return {"steps": steps, "frames": frames, "seconds": elapsed}


def breakdown(suite: TabletopSuite, repeats: int = 2000) -> dict[str, float]:
    """Seconds per physics control step and per rendered frame, measured in isolation."""
    env = suite.make_env(1, chunk_size=1)
    env.reset(_prompts(suite, 1, np.random.default_rng(1)))
    sim = env.sims[0]
    actions = np.random.default_rng(2).uniform(-1, 1, (repeats, suite.action_dim))
    t0 = time.perf_counter()
    for a in actions:
        sim.step(a)
        if sim.steps >= sim.task.spec.max_steps:
            sim.reset(0)
    physics = (time.perf_counter() - t0) / repeats
    t0 = time.perf_counter()
    for _ in range(repeats // 4):
        env._render(0)
    render = (time.perf_counter() - t0) / (repeats // 4)
    env.close()
    return {"physics_per_step": physics, "render_per_frame": render}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", default="tabletop", choices=sorted(TARGETS) + ["libero"])
    parser.add_argument("--libero-suite", default="libero_spatial", help="with --suite libero")
    parser.add_argument("--tasks", default="0,1", help="with --suite libero: task indices of the LIBERO suite")
    parser.add_argument("--num-envs", type=int, default=1)
    parser.add_argument("--chunk-size", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--image-sizes", default="64,128", help="with --suite libero: camera sizes, one after another")
    parser.add_argument("--rounds", type=int, default=3, help="with --suite libero: turns the three loops take")
    parser.add_argument("--wrist-camera", action="store_true")
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # per-core numbers: keep torch from spreading over cores
    if args.suite == "libero":
        from libero_speed import compare

        compare(args.libero_suite, [int(t) for t in args.tasks.split(",")],
                [int(s) for s in args.image_sizes.split(",")], args.chunk_size, args.seconds, args.wrist_camera,
                args.rounds)
        return
    if args.suite == "bimanual":
        from vla_grpo.envs.bimanual import BimanualSuite

        suite = BimanualSuite(image_size=args.image_size)
    else:
        suite = TabletopSuite(image_size=args.image_size, wrist_camera=args.wrist_camera)
    run_env(suite, args.num_envs, args.chunk_size, 0.5)  # warm-up: GL context, model compile
    r = run_env(suite, args.num_envs, args.chunk_size, args.seconds)
    b = breakdown(suite)
    cams = 2 if args.wrist_camera else 1
    steps_s, frames_s = r["steps"] / r["seconds"], r["frames"] / r["seconds"]
    physics = r["steps"] * b["physics_per_step"] / r["seconds"]
    render = r["frames"] * cams * b["render_per_frame"] / r["seconds"]
    print(f"{args.suite} env, {args.image_size} px, chunk {args.chunk_size}, {args.num_envs} sub-env(s), "
          f"{'2 cameras' if cams == 2 else '1 camera'}, single process")
    print(f"  env-steps/s : {steps_s:9.0f}   (simulator control steps, {args.seconds:.0f} s run)")
    print(f"  frames/s    : {frames_s:9.0f}   (one frame per decision)")
    print(f"  physics     : {1e6 * b['physics_per_step']:7.1f} us/step  -> {100 * physics:4.1f}% of wall time")
    print(f"  render      : {1e6 * b['render_per_frame']:7.1f} us/frame -> {100 * render:4.1f}% of wall time")
    print(f"  other       : {100 * max(0.0, 1 - physics - render):4.1f}% (TensorDict, obs, resets)")
    target = TARGETS[args.suite]
    print(f"  target >= {target} env-steps/s per core: {'OK' if steps_s >= target else 'MISSED'}")


if __name__ == "__main__":
    main()
