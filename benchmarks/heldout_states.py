"""Greedy success of tabletop checkpoints on initial states that no stage of the quickstart protocol uses.

The quickstart's eval uses states 0..9 (60 episodes on its 6 seen tasks: one failure moves a seed's
failure removal by ~17%); GRPO rolls out from 10..49 and SFT's demo starts at 25. States 50.. are
seeded like the others (a pure function of task and id) and never touched, so they give a bigger
held-out eval of the same checkpoints. Pairs ``START END`` (an SFT checkpoint and the GRPO checkpoint
grown from it) print each success and the share of the start's failures the end removed::

    python benchmarks/heldout_states.py --policy flow --pairs \\
        runs/learning_flow/sft1_seed0/checkpoints/last.ckpt runs/learning_flow/full_seed0/tb/version_0/checkpoints/epoch=0-step=100.ckpt
"""
from __future__ import annotations

import argparse
import time

#: the policy's base directory per family (its sizes; the checkpoint's weights replace its weights)
BASES = {"token": "checkpoints/tabletop_base", "flow": "checkpoints/tabletop_flow_base"}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policy", choices=sorted(BASES), required=True)
    parser.add_argument("--pairs", nargs="+", required=True, help="START END [START END ...] checkpoints")
    parser.add_argument("--seen-per-family", type=int, default=2, help="2: the quickstart's 6 seen tasks")
    parser.add_argument("--first-state", type=int, default=50)
    parser.add_argument("--states", type=int, default=40)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    if len(args.pairs) % 2:
        parser.error("--pairs takes START END checkpoints in twos")

    from vla_grpo.envs.tabletop import TabletopSuite
    from vla_grpo.init_from import init_from_checkpoint
    from vla_grpo.keys import SUCCESS_KEY
    from vla_grpo.policies import FlowVLAPolicy, ReadingVLAPolicy
    from vla_grpo.prompts import Prompt
    from vla_grpo.rollout import GroupedRollout

    last = args.first_state + args.states
    suite = TabletopSuite(image_size=64, seen_per_family=args.seen_per_family, num_init_states=last)
    prompts = [Prompt(i, s) for i, t in enumerate(suite.all_tasks()) if t.split == "train"
               for s in range(args.first_state, last)]
    rollout = GroupedRollout(suite, num_envs=len(prompts), chunk_size=8, num_workers=args.workers)
    cls = FlowVLAPolicy if args.policy == "flow" else ReadingVLAPolicy

    def success(path: str) -> float:
        policy = cls(action_dim=7, chunk_size=8, state_dim=8, image_size=64, pretrained_path=BASES[args.policy])
        init_from_checkpoint(policy, path)
        policy.eval()
        data = rollout.run(policy, prompts, list(range(len(prompts))), greedy=True)
        return float(data.get(("next", SUCCESS_KEY)).reshape(len(prompts), -1).any(-1).float().mean())

    print(f"{len(prompts)} episodes per checkpoint: seen tasks, states {args.first_state}..{last - 1}")
    removed = []
    try:
        for start_path, end_path in zip(args.pairs[::2], args.pairs[1::2], strict=True):
            t = time.perf_counter()
            start, end = success(start_path), success(end_path)
            removed.append((end - start) / (1 - start) if start < 1 else float("nan"))
            print(f"{start:.3f} -> {end:.3f}  removes {100 * removed[-1]:.0f}% of the failures  "
                  f"({time.perf_counter() - t:.0f} s)  {end_path}", flush=True)
    finally:
        rollout.close()
    print(f"mean failure removal over {len(removed)} pairs: {100 * sum(removed) / len(removed):.0f}%")


if __name__ == "__main__":
    main()
