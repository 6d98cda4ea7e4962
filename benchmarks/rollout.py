"""Rollout throughput against the hardware limit, and the prompt scheduler's savings.

Prints, from one run on the tabletop suite (128 px, chunk 8):

1. raw single-process simulator env-steps/s (random chunks, no policy; each
   process with its share ``envs / workers`` of the sub-envs) x workers: the
   ideal for that many simulator processes;
2. the rollout engine's env-steps/s with TinyVLA in the loop (``GroupedRollout``
   over a ``SimulatorPool`` of ``num_workers`` processes, one batched policy call
   per decision) and its ratio to the ideal (goal >= 0.85); then the same with
   ``pipeline=True`` (two halves of the workers stepped in turn, the policy on one
   half while the other simulates);
3. the same decision loop on TorchRL's ``ParallelEnv`` (the engine before
   ``SimulatorPool``), as the baseline of the engine's speed-up;
4. the limit when the policy shares the simulators' cores: the policy's time
   per decision against the simulators' core-time per decision
   (``sim / (sim + policy)`` is the highest ratio reachable with a worker per core);
   on a GPU (``--device cuda``), the policy's wall time against a worker's
   simulation time per decision (the limit of a synchronous step).
   With ``--concurrent-raw``: ``workers`` raw processes running at once, what the
   simulators reach together on this machine (shared caches, clocks, one GPU
   rendering for all), and the engine against that.
5. the fraction of rolled-out groups discarded by dynamic sampling with the
   success-aware prompt scheduler, and with Thompson sampling over tasks, vs
   uniform prompt draws, same policy, same number of rounds (goal <= 0.5x uniform).

    python benchmarks/rollout.py --workers 2 --rounds 12 [--policy-ckpt sft.ckpt]
    python benchmarks/rollout.py --workers 2 --image-size 64 --hidden-dim 256 --vocab-size 32 \
        --policy-ckpt runs/sft_tabletop/checkpoints/last.ckpt      # the SFT policy of conf/sft_tabletop.yaml

Prompts are drawn from initial states 10 and up (GRPO's default: the greedy
eval's states 0..9 are left out).
"""
from __future__ import annotations

import argparse
import functools
import os
import time

os.environ.setdefault("MUJOCO_GL", "egl")

import torch  # noqa: E402
from torchrl.envs import ParallelEnv  # noqa: E402

from vla_grpo.envs.tabletop import TabletopSuite  # noqa: E402
from vla_grpo.init_from import load_policy_weights  # noqa: E402
from vla_grpo.policies.tiny import TinyVLAPolicy  # noqa: E402
from vla_grpo.prompts import (  # noqa: E402
    PromptSampler,
    SuccessAwarePromptSampler,
    ThompsonPromptSampler,
    prompt_instructions,
    prompt_reset_td,
    split_prompts,
)
from vla_grpo.rollout import ActivePolicyStep, GroupedRollout  # noqa: E402

FIRST_STATE = 10


def raw_steps_per_s(suite, num_envs: int, chunk: int, seconds: float = 5.0) -> float:
    """Single-process env-steps/s of the suite env with random action chunks."""
    env = suite.make_env(num_envs, chunk_size=chunk)
    prompts = split_prompts(suite, "train", 4)
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        idx = torch.randint(len(prompts), (num_envs,))
        td = env.reset(prompt_reset_td([prompts[i] for i in idx], [0] * num_envs))
        for _ in range(suite.max_decisions(chunk)):
            td["action"] = torch.rand(num_envs, chunk, suite.action_dim) * 2 - 1
            td = env.step(td)
            steps += int((~td["next", "done"]).sum()) * chunk
            if td["next", "done"].all():
                break
            td = env.step_mdp(td)
    env.close()
    return steps / (time.perf_counter() - start)


def engine_steps_per_s(suite, policy, args, pipeline: bool = False) -> float:
    rollout = GroupedRollout(suite, num_envs=args.envs, chunk_size=args.chunk, num_workers=args.workers,
                             pipeline=pipeline)
    sampler = PromptSampler(suite, first_state=FIRST_STATE, seed=0)
    try:
        rollout.run(policy, sampler.draw(args.envs), list(range(args.envs)))  # start the workers
        rates = []
        for _ in range(3):
            rollout.run(policy, sampler.draw(args.envs), list(range(args.envs)))
            rates.append(rollout.last_env_steps_per_s)
    finally:
        rollout.close()
    return sum(rates) / len(rates)


def parallelenv_steps_per_s(suite, policy, args) -> float:
    """The engine's decision loop on a TorchRL ``ParallelEnv`` of the same workers (the baseline)."""
    per = args.envs // args.workers
    env = ParallelEnv(args.workers, functools.partial(suite.make_env, per, chunk_size=args.chunk),
                      num_threads=1, num_sub_threads=1)
    sampler = PromptSampler(suite, first_state=FIRST_STATE, seed=0)
    rates = []
    try:
        for rep in range(4):  # the first starts the workers
            prompts = sampler.draw(args.envs)
            actor = ActivePolicyStep(policy, False, args.envs, prompt_instructions(suite, prompts))
            td = prompt_reset_td(prompts, list(range(args.envs)))
            start, decisions = time.perf_counter(), 0
            with torch.no_grad():
                td = env.reset(td.reshape(args.workers, per))
                for _ in range(suite.max_decisions(args.chunk)):
                    decisions += int((~td["done"]).sum())
                    td = env.step(actor(td))
                    if td["next", "done"].all():
                        break
                    td = env.step_mdp(td)
            if rep:
                rates.append(decisions * args.chunk / (time.perf_counter() - start))
    finally:
        env.close()
    return sum(rates) / len(rates)


def policy_ms_per_decision(suite, policy, args) -> float:
    """Milliseconds of the engine's policy step on ``args.envs`` observations (``ActivePolicyStep``:
    input to the device, the policy, actions back): on one CPU thread (its core-time), or on the GPU
    (its wall time)."""
    prompts = PromptSampler(suite, first_state=FIRST_STATE, seed=0).draw(args.envs)
    env = suite.make_env(args.envs, chunk_size=args.chunk)
    td = env.reset(prompt_reset_td(prompts, [0] * args.envs)).exclude("language_instruction")
    env.close()
    actor = ActivePolicyStep(policy, False, args.envs, prompt_instructions(suite, prompts))
    threads = torch.get_num_threads()
    if actor.device.type == "cpu":
        torch.set_num_threads(1)
    with torch.no_grad():
        for _ in range(5):
            actor(td.clone())
        start = time.perf_counter()
        for _ in range(30):
            actor(td.clone())  # its actions come back to the CPU: this waits for the device
    torch.set_num_threads(threads)
    return (time.perf_counter() - start) / 30 * 1e3


def _raw_in_worker(image_size: int, num_envs: int, chunk: int, seconds: float, barrier, results) -> None:
    torch.set_num_threads(1)
    suite = TabletopSuite(image_size=image_size)
    raw_steps_per_s(suite, num_envs, chunk, seconds=1.0)  # GL context, compiled scenes
    barrier.wait()  # all measure at the same time
    results.put(raw_steps_per_s(suite, num_envs, chunk, seconds))


def concurrent_raw_steps_per_s(args) -> float:
    """Summed env-steps/s of ``workers`` independent raw processes running at the same time: what
    the simulators alone reach together on this machine (shared caches, clocks, GPU rendering)."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(args.workers), ctx.Queue()
    procs = [ctx.Process(target=_raw_in_worker, args=(args.image_size, args.envs // args.workers, args.chunk,
                                                       5.0, barrier, results), daemon=True)
             for _ in range(args.workers)]
    for proc in procs:
        proc.start()
    total = sum(results.get(timeout=300) for _ in procs)
    for proc in procs:
        proc.join()
    return total


def discarded_fraction(suite, policy, sampler, args) -> tuple[float, float, dict[int, list[bool]]]:
    """Fraction of groups whose G outcomes are all equal, over ``args.rounds`` rounds and over their
    second half, and each task's outcomes (True = discarded)."""
    G, prompts_per_round = args.group_size, args.envs // args.group_size
    rollout = GroupedRollout(suite, num_envs=args.envs, chunk_size=args.chunk, num_workers=args.workers)
    outcomes: list[bool] = []
    per_task: dict[int, list[bool]] = {}
    try:
        for _ in range(args.rounds):
            prompts = sampler.draw(prompts_per_round)
            data = rollout.run(policy, [p for p in prompts for _ in range(G)], list(range(args.envs)))
            wins = data["next", "success"].squeeze(-1).any(-1).view(prompts_per_round, G).sum(-1)
            for prompt, w in zip(prompts, wins.tolist(), strict=True):
                sampler.update(prompt, int(w), G)
                outcomes.append(w in (0, G))
                per_task.setdefault(prompt.task_index, []).append(w in (0, G))
    finally:
        rollout.close()
    late = outcomes[len(outcomes) // 2:]
    return sum(outcomes) / max(len(outcomes), 1), sum(late) / max(len(late), 1), per_task


def throughput(suite, policy, args) -> None:
    """Prints the ideal, the engine, the ParallelEnv baseline and the policy-cost limit (items 1-4)."""
    raw = raw_steps_per_s(suite, args.envs // args.workers, args.chunk)
    engine = engine_steps_per_s(suite, policy, args)
    piped = engine_steps_per_s(suite, policy, args, pipeline=True)
    baseline = None if args.skip_baseline else parallelenv_steps_per_s(suite, policy, args)
    ideal = raw * args.workers
    device = next(policy.parameters()).device
    print(f"raw single-process sim ({args.envs // args.workers} sub-envs): {raw:,.0f} env-steps/s "
          f"x {args.workers} workers = ideal {ideal:,.0f}")
    print(f"rollout engine with TinyVLA on {device.type}: {engine:,.0f} env-steps/s; ratio to ideal "
          f"{engine / ideal:.2f} (goal >= 0.85)")
    print(f"rollout engine, pipelined halves (policy on one half while the other simulates): {piped:,.0f} "
          f"env-steps/s; ratio to ideal {piped / ideal:.2f}; pipelined / engine = {piped / engine:.2f}")
    if baseline is not None:
        print(f"same loop on TorchRL ParallelEnv: {baseline:,.0f} env-steps/s; engine / ParallelEnv = {engine / baseline:.2f}")
    if args.concurrent_raw:
        together = concurrent_raw_steps_per_s(args)
        print(f"{args.workers} raw processes at once: {together:,.0f} env-steps/s ({together / ideal:.2f} of the ideal); "
              f"engine at {engine / together:.2f} of that, pipelined {piped / together:.2f}")
    policy_ms = policy_ms_per_decision(suite, policy, args)
    if device.type == "cpu":
        sim_ms = args.envs * args.chunk / raw * 1e3  # core-milliseconds of simulation per decision of all sub-envs
        bound = sim_ms / (sim_ms + policy_ms)
        print(f"policy {policy_ms:.1f} ms per decision of {args.envs} sub-envs vs simulation {sim_ms:.1f} core-ms: "
              f"highest ratio with the policy on the simulators' cores {bound:.2f}; engine at "
              f"{engine / ideal / bound:.2f} of that")
    else:  # the simulators wait while the policy runs: a worker's wall time per decision is sim + policy
        sim_ms = args.envs // args.workers * args.chunk / raw * 1e3
        bound = sim_ms / (sim_ms + policy_ms)
        print(f"policy {policy_ms:.1f} ms per decision of {args.envs} sub-envs on {device.type} vs {sim_ms:.1f} ms of "
              f"simulation per worker: highest ratio of a synchronous step {bound:.2f}; engine at "
              f"{engine / ideal / bound:.2f} of that")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--envs", type=int, default=16, help="sub-envs per round")
    parser.add_argument("--group-size", type=int, default=8)
    parser.add_argument("--chunk", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=40, help="rounds per prompt sampler (G x envs/G episodes each)")
    parser.add_argument("--skip-throughput", action="store_true", help="only the prompt-scheduler comparison")
    parser.add_argument("--skip-scheduler", action="store_true", help="only the throughput measurements")
    parser.add_argument("--concurrent-raw", action="store_true",
                        help="also measure `workers` raw processes running at once (the simulators' joint limit)")
    parser.add_argument("--skip-baseline", action="store_true", help="no TorchRL ParallelEnv baseline")
    parser.add_argument("--device", default="cpu", help="where the policy runs (cpu, cuda)")
    parser.add_argument("--hidden-dim", type=int, default=128)
    parser.add_argument("--vocab-size", type=int, default=256)
    parser.add_argument("--policy-ckpt", default=None, help="a .ckpt (e.g. SFT) to load into TinyVLA")
    args = parser.parse_args()
    torch.manual_seed(0)
    suite = TabletopSuite(image_size=args.image_size)
    policy = TinyVLAPolicy(action_dim=7, chunk_size=args.chunk, state_dim=suite.state_dim,
                           image_size=args.image_size, hidden_dim=args.hidden_dim, vocab_size=args.vocab_size,
                           temperature=1.6)
    if args.policy_ckpt:
        load_policy_weights(policy, args.policy_ckpt)
    policy.to(args.device)
    if not args.skip_throughput:
        throughput(suite, policy, args)
    if args.skip_scheduler:
        return
    uniform = discarded_fraction(suite, policy, PromptSampler(suite, first_state=FIRST_STATE, seed=0), args)
    groups = args.rounds * args.envs // args.group_size
    aware = {}
    for name, cls in (("success-aware", SuccessAwarePromptSampler), ("thompson", ThompsonPromptSampler)):
        aware[name] = discarded_fraction(suite, policy, cls(suite, group_size=args.group_size,
                                                            first_state=FIRST_STATE, seed=0), args)
        for label, i in (("all", 0), ("second half", 1)):
            u, a = uniform[i], aware[name][i]
            ratio = a / u if u else float("nan")
            print(f"discarded groups ({label} of {groups} per sampler): uniform {u:.2f}, {name} {a:.2f}; "
                  f"ratio {ratio:.2f} (goal <= 0.5)")
    # what no scheduler can beat: the discarded fraction of the task with the most mixed groups (uniform's data)
    rates = {t: sum(v) / len(v) for t, v in uniform[2].items() if len(v) >= 5}
    if rates:
        best = min(rates, key=rates.get)
        floor = rates[best]
        print(f"per task (uniform draws, tasks with >= 5 groups): discarded {', '.join(f'{r:.2f}' for r in sorted(rates.values()))}; "
              f"drawing only the best task ({suite.all_tasks()[best].name}) would discard {floor:.2f}, "
              f"ratio {floor / uniform[0]:.2f}")
    for name, result in aware.items():
        drawn = {t: len(v) for t, v in result[2].items()}
        print(f"{name} draws per task ({len(drawn)} tasks): {sorted(drawn.values(), reverse=True)}")


if __name__ == "__main__":
    main()
