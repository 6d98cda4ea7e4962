"""Render a contact sheet of every tabletop task: one tile per task, its split and instruction.

    python scripts/contact_sheet.py                        # -> docs/tabletop_tasks.png
    python scripts/contact_sheet.py --state 7 --size 160 --out /tmp/sheet.png
"""
from __future__ import annotations

import argparse
import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from tensordict import TensorDict  # noqa: E402

from vla_grpo.envs.tabletop import TabletopSuite  # noqa: E402

_SPLIT_COLOURS = {"train": "#2b6cb0", "unseen_spatial": "#c05621", "unseen_object": "#2f855a", "unseen_goal": "#6b46c1"}


def first_frames(suite: TabletopSuite, state: int) -> torch.Tensor:
    """First agent-view frame of every task at initial state ``state``, ``[T, S, S, 3]``."""
    n = len(suite.all_tasks())
    env = suite.make_env(n, chunk_size=1)
    td = env.reset(TensorDict({"task_index": torch.arange(n)[:, None],
                               "init_state_id": torch.full((n, 1), state)}, batch_size=[n]))
    env.close()
    return td["observation", "image"].permute(0, 2, 3, 1)


def contact_sheet(suite: TabletopSuite, out: Path, state: int = 0, columns: int = 6) -> None:
    """Save a grid of first frames titled with split, task name and instruction."""
    frames, specs = first_frames(suite, state), suite.all_tasks()
    rows = -(-len(specs) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.1 * columns, 3.75 * rows))
    for ax in axes.flat:
        ax.axis("off")
    for ax, frame, spec in zip(axes.flat, frames, specs, strict=False):
        ax.imshow(frame.numpy(), interpolation="nearest")
        text = "\n".join(textwrap.wrap(spec.instruction, 36))
        ax.set_title(f"[{spec.split}] {spec.name}\n{text}", fontsize=8.5, loc="left",
                     color=_SPLIT_COLOURS.get(spec.split, "black"))
    fig.suptitle(f"tabletop suite: {len(specs)} tasks, initial state {state}, {suite.image_size} px agent view",
                 fontsize=13)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "docs" / "tabletop_tasks.png")
    parser.add_argument("--state", type=int, default=0, help="initial-state id shown for every task")
    parser.add_argument("--size", type=int, default=128, help="image size (the env default is 128)")
    args = parser.parse_args(argv)
    contact_sheet(TabletopSuite(image_size=args.size), args.out, state=args.state)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
