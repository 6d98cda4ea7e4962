"""Greedy success of tabletop checkpoints on initial states that no stage of the quickstart protocol uses.

The quickstart's eval uses states 0..9 (60 episodes on its 6 seen tasks: one failure moves a seed's
failure removal by ~17%); GRPO rolls out from 10..49 and SFT's demo starts at 25. States 50.. are
seeded like the others (a pure function of task and id) and never touched, so they give a bigger
held-out eval of the same checkpoints. Pairs ``START END`` (an SFT checkpoint and the GRPO checkpoint
grown from it) print each success and the share of the start's failures the end removed::

    python benchmarks/heldout_states.py --policy flow --pairs \\
        runs/learning_flow/sft1_seed0/checkpoints/last.ckpt runs/learning_flow/full_seed0/tb/version_0/checkpoints/epoch=0-step=100.ckpt

``--suite libero_spatial`` (or ``libero_object``, ``libero_goal``; the ``[libero]`` extra) measures the
LIBERO protocol's checkpoints (policy sizes of ``checkpoints/libero_base``) on LIBERO's fixed states
``--first-state``..: 10..49 are GRPO's rollout states, so there it is a training-side diagnostic, not
a held-out eval. ``--temperature T`` samples at T (as GRPO's rollouts do) instead of the greedy argmax.
``--num-steps K`` integrates a flow policy's ODE in K Euler steps instead of its base's (a run trained
with ``--model.policy.init_args.num_steps=K``).
``--per-task`` also prints each seen task's success at both ends of a pair.
"""
from __future__ import annotations

import argparse
import time

import torch

#: the policy's base directory per family (its sizes; the checkpoint's weights replace its weights)
BASES = {"token": "checkpoints/tabletop_base", "flow": "checkpoints/tabletop_flow_base"}
LIBERO_BASE = "checkpoints/libero_base"
LIBERO_SUITES = ("libero_spatial", "libero_object", "libero_goal")


def _arguments(argv: list[str] | None) -> tuple[argparse.ArgumentParser, argparse.Namespace]:
    """The parsed arguments, every check that needs no suite done (a bad one exits 2, one line)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policy", choices=sorted(BASES), required=True)
    parser.add_argument("--pairs", nargs="+", required=True, help="START END [START END ...] checkpoints")
    parser.add_argument("--seen-per-family", type=int, default=2, help="2: the quickstart's 6 seen tasks")
    parser.add_argument("--first-state", type=int, default=50)
    parser.add_argument("--states", type=int, default=40)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=None,
                        help="episodes played at once (default: all; LIBERO: 10, each a ~0.6 GB simulator)")
    parser.add_argument("--suite", choices=("tabletop", *LIBERO_SUITES), default="tabletop")
    parser.add_argument("--temperature", type=float, default=None,
                        help="sample at this temperature instead of greedy (GRPO's rollouts: 1.6)")
    parser.add_argument("--num-steps", type=int, default=None,
                        help="--policy flow: Euler steps K (default: the base's); the run's own K")
    parser.add_argument("--per-task", action="store_true", help="also print each seen task's success, start -> end")
    args = parser.parse_args(argv)
    if args.num_steps is not None and (args.policy != "flow" or args.num_steps < 1):
        parser.error(f"--num-steps takes --policy flow and K >= 1 (got --policy {args.policy}, K={args.num_steps})")
    if args.suite != "tabletop" and args.policy != "token":
        parser.error("--suite libero_* takes --policy token (the LIBERO base is a token policy)")
    if args.temperature is not None and args.temperature <= 0:
        parser.error(f"--temperature must be > 0 (got {args.temperature})")
    if args.batch is not None and args.batch < 1:
        parser.error(f"--batch must be >= 1 (got {args.batch})")
    if len(args.pairs) % 2:
        parser.error("--pairs takes START END checkpoints in twos")
    return parser, args


def _suite_and_base(parser: argparse.ArgumentParser, args: argparse.Namespace, last: int):
    """The suite whose states ``..last - 1`` are played, and the base directory giving the policy's sizes."""
    if args.suite == "tabletop":
        from vla_grpo.envs.tabletop import TabletopSuite

        return TabletopSuite(image_size=64, seen_per_family=args.seen_per_family, num_init_states=last), BASES[args.policy]
    if last > 50:
        parser.error(f"LIBERO has 50 fixed states per task; --first-state + --states is {last}")
    from vla_grpo.envs.libero import LiberoSuite

    return LiberoSuite(args.suite, unseen=[], image_size=64, max_sims=6), LIBERO_BASE


def _per_task(suite, prompts, start_won: torch.Tensor, end_won: torch.Tensor) -> list[tuple[str, float, float]]:
    """(task name, start success, end success) per seen task, in the suite's order."""
    names = [t.name for t in suite.all_tasks()]
    index = torch.tensor([p.task_index for p in prompts])
    return [(names[i], start_won[index == i].mean().item(), end_won[index == i].mean().item())
            for i in sorted(set(index.tolist()))]


def main(argv: list[str] | None = None) -> None:
    parser, args = _arguments(argv)
    from vla_grpo.init_from import init_from_checkpoint
    from vla_grpo.keys import SUCCESS_KEY
    from vla_grpo.policies import FlowVLAPolicy, ReadingVLAPolicy
    from vla_grpo.prompts import Prompt
    from vla_grpo.rollout import GroupedRollout

    last = args.first_state + args.states
    suite, base = _suite_and_base(parser, args, last)
    prompts = [Prompt(i, s) for i, t in enumerate(suite.all_tasks()) if t.split == "train"
               for s in range(args.first_state, last)]
    batch = args.batch or (len(prompts) if args.suite == "tabletop" else 10)
    if len(prompts) % batch:
        parser.error(f"--batch must divide the {len(prompts)} episodes (got {batch})")
    rollout = GroupedRollout(suite, num_envs=batch, chunk_size=8, num_workers=args.workers)
    cls = FlowVLAPolicy if args.policy == "flow" else ReadingVLAPolicy
    knobs = {} if args.num_steps is None else {"num_steps": args.num_steps}  # the run's K, not the base's

    def success(path: str) -> tuple[float, torch.Tensor]:
        """The checkpoint's success over all prompts, and each prompt's outcome (1 or 0)."""
        policy = cls(action_dim=7, chunk_size=8, state_dim=8, image_size=64, pretrained_path=base, **knobs)
        init_from_checkpoint(policy, path)
        policy.eval()
        if args.temperature is not None:
            torch.manual_seed(0)  # the same draws for every checkpoint
            policy.temperature = args.temperature
        outcomes = []
        for first in range(0, len(prompts), batch):
            data = rollout.run(policy, prompts[first:first + batch], list(range(first, first + batch)),
                               greedy=args.temperature is None)
            outcomes.append(data.get(("next", SUCCESS_KEY)).reshape(batch, -1).any(-1).float())
        won = torch.cat(outcomes)
        return won.mean().item(), won

    how = "greedy" if args.temperature is None else f"sampled at T={args.temperature}"
    print(f"{len(prompts)} episodes per checkpoint ({args.suite}, {how}): seen tasks, states {args.first_state}..{last - 1}")
    removed = []
    try:
        for start_path, end_path in zip(args.pairs[::2], args.pairs[1::2], strict=True):
            t = time.perf_counter()
            (start, start_won), (end, end_won) = success(start_path), success(end_path)
            removed.append((end - start) / (1 - start) if start < 1 else float("nan"))
            print(f"{start:.3f} -> {end:.3f}  removes {100 * removed[-1]:.0f}% of the failures  "
                  f"({time.perf_counter() - t:.0f} s)  {end_path}", flush=True)
            if args.per_task:
                for task, a, b in _per_task(suite, prompts, start_won, end_won):
                    print(f"    {task}: {a:.2f} -> {b:.2f}")
    finally:
        rollout.close()
    print(f"mean failure removal over {len(removed)} pairs: {100 * sum(removed) / len(removed):.0f}%")


if __name__ == "__main__":
    main()
