"""Image augmentation for SFT batches (uint8 ``[N, 3, H, W]`` in, same out)."""
from __future__ import annotations

import torch


def random_shift(images: torch.Tensor, pad: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """DrQ random shift: pad by replicating the border, crop back at a random offset per image."""
    n, _, h, w = images.shape
    padded = torch.nn.functional.pad(images.float(), (pad, pad, pad, pad), mode="replicate")
    dx, dy = (torch.randint(0, 2 * pad + 1, (n,), generator=generator) for _ in range(2))
    rows = (dy[:, None] + torch.arange(h)[None])[:, None, :, None].expand(n, images.shape[1], h, w + 2 * pad)
    out = padded.gather(2, rows)
    cols = (dx[:, None] + torch.arange(w)[None])[:, None, None, :].expand(n, images.shape[1], h, w)
    return out.gather(3, cols).round().to(images.dtype)


def color_jitter(images: torch.Tensor, strength: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Random brightness and contrast per image, each scaled by ``1 ± strength``."""
    n = images.shape[0]

    def factor() -> torch.Tensor:
        return 1 + strength * (2 * torch.rand(n, 1, 1, 1, generator=generator) - 1)

    x = images.float()
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * factor() + mean * factor()
    return x.clamp(0, 255).round().to(images.dtype)


__all__ = ["color_jitter", "random_shift"]
