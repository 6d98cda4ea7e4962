"""A flow checkpoint's success by Euler steps K (greedy ODE) and by SDE noise level sigma (sampled), on the tabletop.

Loads the policy weights of a flow SFT or GRPO checkpoint (``FlowVLAPolicy``,
default sizes) and rolls out every seen task from initial states
``first_state..first_state+states-1`` (default 0: the eval states; GRPO trains on 10+ and SFT's demos
start at 25), once per setting::

    python benchmarks/flow_sampling.py runs/sft_tabletop_flow/checkpoints/last.ckpt --seen-per-family 1 \\
        --steps 1 2 3 4 6 10 --sigma 0.1 0.2 0.3 0.5

Prints one line per K (greedy) and per sigma (sampled at the policy's K, seed 0):
what picks ``FlowVLAPolicy.num_steps`` and ``sigma`` (docs/experiments/flow.md).
"""
from __future__ import annotations

import argparse
import time

import torch


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--seen-per-family", type=int, default=None, help="the suite's seen tasks per family")
    parser.add_argument("--states", type=int, default=25, help="initial states per task")
    parser.add_argument("--first-state", type=int, default=0,
                        help="the first initial state (0: the eval states; 10+: GRPO's train states at "
                             "eval_states_per_task=10, never evaluated, so fit for choosing a knob)")
    parser.add_argument("--steps", type=int, nargs="*", default=[1, 2, 4, 10], help="K for greedy (ODE) rollouts")
    parser.add_argument("--sigma", type=float, nargs="*", default=[0.1, 0.3, 0.5], help="sigma for sampled rollouts")
    parser.add_argument("--sample-steps", type=int, default=4, help="K of the sampled rollouts")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)

    from vla_grpo.envs.tabletop import TabletopSuite
    from vla_grpo.init_from import init_from_checkpoint
    from vla_grpo.keys import SUCCESS_KEY
    from vla_grpo.policies import FlowVLAPolicy
    from vla_grpo.prompts import Prompt
    from vla_grpo.rollout import GroupedRollout

    suite = TabletopSuite(image_size=64, seen_per_family=args.seen_per_family)
    prompts = [Prompt(i, s) for i, t in enumerate(suite.all_tasks()) if t.split == "train" for s in range(args.first_state, args.first_state + args.states)]
    policy = FlowVLAPolicy(action_dim=7, chunk_size=8, state_dim=8, image_size=64)
    init_from_checkpoint(policy, args.checkpoint)
    rollout = GroupedRollout(suite, num_envs=len(prompts), chunk_size=8, num_workers=args.workers)

    def success(greedy: bool) -> float:
        data = rollout.run(policy, prompts, list(range(len(prompts))), greedy=greedy)
        return float(data.get(("next", SUCCESS_KEY)).reshape(len(prompts), -1).any(-1).float().mean())

    print(f"{args.checkpoint}: {len(prompts)} episodes per setting")
    try:
        for k in args.steps:
            policy.num_steps = k
            start = time.perf_counter()
            print(f"K={k:<3} greedy (ODE)  success {success(True):.3f}  ({time.perf_counter() - start:.0f} s)", flush=True)
        policy.num_steps = args.sample_steps
        for sigma in args.sigma:
            policy.sigma = sigma
            torch.manual_seed(0)
            print(f"sigma={sigma:<4} sampled (K={args.sample_steps})  success {success(False):.3f}", flush=True)
    finally:
        rollout.close()


if __name__ == "__main__":
    main()
