"""Rollout throughput against the hardware limit, and the prompt scheduler's savings.

Prints, from one run on the tabletop suite (128 px, chunk 8):

1. raw single-process simulator env-steps/s (random chunks, no policy) x
   workers: the ideal for that many simulator processes;
2. the rollout engine's env-steps/s with TinyVLA in the loop (``GroupedRollout``
   over ``num_workers`` ParallelEnv workers, one batched policy call per
   decision) and its ratio to the ideal (goal >= 0.85);
3. the fraction of rolled-out groups discarded by dynamic sampling with the
   success-aware prompt scheduler vs uniform prompt draws, same policy, same
   number of rounds (goal <= 0.5x uniform).

    python benchmarks/rollout.py --workers 2 --rounds 12 [--policy-ckpt sft.ckpt]
    python benchmarks/rollout.py --workers 2 --image-size 64 --hidden-dim 256 --vocab-size 32 \
        --policy-ckpt runs/sft_tabletop/checkpoints/last.ckpt      # the SFT policy of conf/sft_tabletop.yaml

Prompts are drawn from initial states 10 and up (GRPO's default: the greedy
eval's states 0..9 are left out).
"""
from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("MUJOCO_GL", "egl")

import torch  # noqa: E402
from tensordict import TensorDict  # noqa: E402

from vla_grpo.checkpoint import load_policy_weights  # noqa: E402
from vla_grpo.envs.tabletop import TabletopSuite  # noqa: E402
from vla_grpo.policies.tiny import TinyVLAPolicy  # noqa: E402
from vla_grpo.rollout import (  # noqa: E402
    GroupedRollout,
    PromptSampler,
    SuccessAwarePromptSampler,
    split_prompts,
)

FIRST_STATE = 10


def raw_steps_per_s(suite, num_envs: int, chunk: int, seconds: float = 5.0) -> float:
    """Single-process env-steps/s of the suite env with random action chunks."""
    env = suite.make_env(num_envs, chunk_size=chunk)
    prompts = split_prompts(suite, "train", 4)
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        idx = torch.randint(len(prompts), (num_envs,))
        td = env.reset(TensorDict({
            "task_index": torch.tensor([[prompts[i].task_index] for i in idx]),
            "init_state_id": torch.tensor([[prompts[i].init_state_id] for i in idx]),
            "group_id": torch.zeros(num_envs, 1, dtype=torch.int64)}, batch_size=[num_envs]))
        for _ in range(suite.max_decisions(chunk)):
            td["action"] = torch.rand(num_envs, chunk, suite.action_dim) * 2 - 1
            td = env.step(td)
            steps += int((~td["next", "done"]).sum()) * chunk
            if td["next", "done"].all():
                break
            td = env.step_mdp(td)
    env.close()
    return steps / (time.perf_counter() - start)


def engine_steps_per_s(suite, policy, args) -> float:
    rollout = GroupedRollout(suite, num_envs=args.envs, chunk_size=args.chunk, num_workers=args.workers)
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


def discarded_fraction(suite, policy, sampler, args) -> float:
    """Fraction of groups whose G outcomes are all equal, over ``args.rounds`` rounds."""
    G, prompts_per_round = args.group_size, args.envs // args.group_size
    rollout = GroupedRollout(suite, num_envs=args.envs, chunk_size=args.chunk, num_workers=args.workers)
    discarded = total = 0
    try:
        for _ in range(args.rounds):
            prompts = sampler.draw(prompts_per_round)
            data = rollout.run(policy, [p for p in prompts for _ in range(G)], list(range(args.envs)))
            wins = data["next", "success"].squeeze(-1).any(-1).view(prompts_per_round, G).sum(-1)
            for prompt, w in zip(prompts, wins.tolist(), strict=True):
                sampler.update(prompt, int(w), G)
                discarded += int(w in (0, G))
                total += 1
    finally:
        rollout.close()
    return discarded / max(total, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--envs", type=int, default=16, help="sub-envs per round")
    parser.add_argument("--group-size", type=int, default=8)
    parser.add_argument("--chunk", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=12)
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
    raw = raw_steps_per_s(suite, args.envs // args.workers, args.chunk)
    engine = engine_steps_per_s(suite, policy, args)
    ideal = raw * args.workers
    print(f"raw single-process sim: {raw:,.0f} env-steps/s x {args.workers} workers = ideal {ideal:,.0f}")
    print(f"rollout engine with TinyVLA: {engine:,.0f} env-steps/s; ratio to ideal {engine / ideal:.2f} (goal >= 0.85)")
    uniform = discarded_fraction(suite, policy, PromptSampler(suite, first_state=FIRST_STATE, seed=0), args)
    aware = discarded_fraction(suite, policy, SuccessAwarePromptSampler(
        suite, group_size=args.group_size, first_state=FIRST_STATE, seed=0), args)
    ratio = aware / uniform if uniform else float("nan")
    print(f"discarded groups: uniform {uniform:.2f}, success-aware {aware:.2f}; ratio {ratio:.2f} (goal <= 0.5)")


if __name__ == "__main__":
    main()
