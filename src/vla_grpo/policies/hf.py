"""A transformers-backed VLA: SigLIP vision + Llama/Qwen2 decoder + OpenVLA-style action tokens.

Layout of one forward pass (OpenVLA-OFT *parallel decoding*)::

    [image patches P] [instruction tokens T] [state 1] [action queries H*A]
     SigLIP -> MLP     LM input embeddings    Linear    learned embeddings

The decoder attends bidirectionally over the whole sequence (padding masked),
and the hidden states of the ``H*A`` action-query positions go through the LM
head restricted to the **last ``num_bins`` (OpenVLA: 256) ids of the LM
vocabulary** (OpenVLA's vocab-tail action tokens): one forward gives the logits
``[B, H, A, num_bins]`` of the whole action chunk, instead of ``H*A``
autoregressive steps.

Action tokens are OpenVLA *window ids* (``torchrl.data.vla.VocabTailActionTokenizer``):
token ``w`` in ``[0, num_bins)`` is LM vocab id ``V - num_bins + w``; decoding maps it to
a bin centre in ``[-1, 1]`` and un-normalizes with the demos' per-dimension
q01/q99 (``set_action_stats``), exactly as OpenVLA does.

Models never download: a tiny model is built from configs, a trained one loads
from a local directory written by :meth:`HFVLAPolicy.save_pretrained`::

    DIR/vla_policy.json        class, action_dim, chunk_size, state_dim, image_size, action stats
    DIR/vision/                SiglipVisionModel.save_pretrained
    DIR/language_model/        (Llama|Qwen2)ForCausalLM.save_pretrained
    DIR/tokenizer/             tokenizer.save_pretrained (ByT5 bytes by default: no vocab file needed)
    DIR/heads.safetensors      image projector, state projector, action queries

``transformers`` is imported lazily, inside this module's functions only.
"""
from __future__ import annotations

import contextlib
from pathlib import Path

import torch
import torch.nn.functional as F
from tensordict import TensorDictBase
from torch import nn
from torchrl.modules.vla import VLAWrapperBase

from vla_grpo.policies.base import TokenPolicyMixin, instruction_strings
from vla_grpo.policies.pretrained import (
    POLICY_JSON,
    PolicyDirectory,
    PretrainedPolicy,
    check_sizes,
    load_action_stats,
)

NUM_BINS = 256  # OpenVLA: 256 action bins, the last 256 ids of the LM vocabulary
_FILES = ("vision", "language_model", "tokenizer", "heads.safetensors")
_TEXT_MODELS = ("llama", "qwen2")
_CACHE_SIZE = 4096  # distinct instructions remembered (a suite has tens)


@contextlib.contextmanager
def _quiet_transformers():
    """Silence transformers' per-file progress bars while saving/loading tiny directories."""
    from transformers.utils import logging

    enabled = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            logging.enable_progress_bar()


class _ActionHeads(nn.Module):
    """The parts of the VLA that are ours, not transformers': projectors and action queries."""

    def __init__(self, vision_hidden: int, text_hidden: int, state_dim: int, num_queries: int) -> None:
        super().__init__()
        # OpenVLA's projector: a 2-layer GELU MLP from vision to LM width
        self.image_projector = nn.Sequential(
            nn.Linear(vision_hidden, text_hidden), nn.GELU(), nn.Linear(text_hidden, text_hidden)
        )
        # OpenVLA-OFT's proprio projector: the state becomes one LM token
        self.state_projector = nn.Linear(state_dim, text_hidden)
        self.action_queries = nn.Parameter(torch.randn(num_queries, text_hidden) * 0.02)


def _build_backbone(*, image_size: int, patch_size: int, vision_hidden: int, text_hidden: int,
                    layers: int, heads: int, text_model: str, vocab_size: int, max_positions: int):
    """A randomly initialised SigLIP vision tower and causal LM, all dropout 0."""
    from transformers import AutoConfig, AutoModelForCausalLM, SiglipVisionConfig, SiglipVisionModel

    vision = SiglipVisionModel(SiglipVisionConfig(
        hidden_size=vision_hidden, intermediate_size=4 * vision_hidden, num_hidden_layers=layers,
        num_attention_heads=heads, image_size=image_size, patch_size=patch_size,
        vision_use_head=False,  # we read every patch; an unused pooling head would break DDP
        attention_dropout=0.0,
    ))
    text_config = AutoConfig.for_model(
        text_model, vocab_size=vocab_size, hidden_size=text_hidden,
        intermediate_size=4 * text_hidden, num_hidden_layers=layers, num_attention_heads=heads,
        num_key_value_heads=heads, max_position_embeddings=max_positions,
        # dropout 0: rollout and update see the same distribution, so the GRPO ratio starts at 1
        attention_dropout=0.0, tie_word_embeddings=True,
    )
    return vision, AutoModelForCausalLM.from_config(text_config)


def _load_backbone(path: Path):
    """Vision tower, LM and tokenizer of a policy directory, in fp32, offline."""
    from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer

    try:
        with _quiet_transformers():
            vision = AutoModel.from_pretrained(path / "vision", dtype=torch.float32, local_files_only=True)
            lm = AutoModelForCausalLM.from_pretrained(path / "language_model", dtype=torch.float32,
                                                      local_files_only=True)
            tokenizer = AutoTokenizer.from_pretrained(path / "tokenizer", local_files_only=True)
    except (OSError, ValueError, KeyError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"`policy.pretrained_path`: {path} does not load ({first})") from None
    return vision, lm, tokenizer


class HFVLAPolicy(PretrainedPolicy, TokenPolicyMixin, VLAWrapperBase):
    """A transformers VLA (SigLIP + Llama/Qwen2) decoding the whole action chunk in one pass.

    Build a tiny random model from the size arguments, or load ``pretrained_path``
    (a directory from :meth:`save_pretrained`; its sizes win over the size
    arguments, and its ``action_dim``/``chunk_size``/``state_dim`` must equal
    the configured ones). Dropout is 0 in the built configs so that scoring is
    deterministic and the GRPO ratio is 1 before the first update.

    Args:
        pretrained_path: a local policy directory to load (never a hub id).
        action_dim: action dimensions of the suite.
        chunk_size: actions per decision (executed open-loop).
        state_dim: proprio state size of the suite.
        image_size: side of the suite's square images (resized to the vision tower's size if different).
        patch_size: SigLIP patch side (``image_size / patch_size`` squared image tokens).
        vision_hidden: SigLIP width.
        text_hidden: decoder width.
        layers: layers of each tower.
        heads: attention heads of each tower.
        text_model: decoder family of a built model, ``"llama"`` or ``"qwen2"``.
        num_bins: action bins per dimension = action ids at the LM vocab tail (OpenVLA: 256).
        max_instruction_tokens: instructions are truncated to this many tokens.
        temperature: softmax temperature for sampling *and* scoring.
        bf16: bfloat16 autocast on CUDA (weights stay fp32; ignored on CPU).
        gradient_checkpointing: recompute activations in backward (transformers' checkpointing).
    """

    policy_files = _FILES
    # image_size may differ: images are resized to the vision tower's size
    suite_dims = ("action_dim", "chunk_size", "state_dim")
    stored_sizes = {"num_bins": "num_bins"}  # the other sizes are the stored models' own configs

    def __init__(
        self,
        pretrained_path: str | None = None,
        action_dim: int = 7,
        chunk_size: int = 8,
        state_dim: int = 9,
        image_size: int = 128,
        patch_size: int = 16,
        vision_hidden: int = 64,
        text_hidden: int = 64,
        layers: int = 2,
        heads: int = 4,
        text_model: str = "llama",
        num_bins: int = NUM_BINS,
        max_instruction_tokens: int = 64,
        temperature: float = 1.0,
        bf16: bool = False,
        gradient_checkpointing: bool = False,
    ) -> None:
        check_sizes(action_dim=action_dim, chunk_size=chunk_size, state_dim=state_dim, image_size=image_size,
                    max_instruction_tokens=max_instruction_tokens)
        if num_bins < 2:
            raise ValueError(f"`policy.num_bins` must be >= 2 (got {num_bins})")
        source, cfg = self.open_pretrained(pretrained_path, action_dim=action_dim, chunk_size=chunk_size,
                                           state_dim=state_dim, num_bins=num_bins)
        super().__init__(
            action_dim=action_dim, chunk_size=chunk_size, action_head="tokens", vocab_size=cfg.num_bins,
            log_probs_mode="token", output_mode="both", return_vla_action_container=False,
        )
        self.state_dim, self.image_size = int(state_dim), int(image_size)
        self.max_instruction_tokens = int(max_instruction_tokens)
        self.bf16 = bool(bf16)
        self._token_cache: dict[str, list[int]] = {}
        if source is None:
            _check_model_sizes(image_size, patch_size, vision_hidden, text_hidden, layers, heads, text_model)
            self._build(patch_size, vision_hidden, text_hidden, layers, heads, text_model)
        else:
            self._build_stored(source)
        self._init_token_policy(action_dim, self.vocab_size, temperature)
        self.load_pretrained(source)
        if gradient_checkpointing:
            for model in (self.vision, self.lm):
                model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})

    # -- construction ------------------------------------------------------------
    def _build(self, patch_size: int, vision_hidden: int, text_hidden: int, layers: int, heads: int,
               text_model: str) -> None:
        from transformers import ByT5Tokenizer

        # byte-level: any instruction tokenizes offline, with no vocabulary file to ship
        self.tokenizer = ByT5Tokenizer()
        num_queries = self.chunk_size * self.action_dim
        max_positions = (self.image_size // patch_size) ** 2 + self.max_instruction_tokens + 1 + num_queries
        self.vision, self.lm = _build_backbone(
            image_size=self.image_size, patch_size=patch_size, vision_hidden=vision_hidden,
            text_hidden=text_hidden, layers=layers, heads=heads, text_model=text_model,
            vocab_size=len(self.tokenizer) + self.vocab_size, max_positions=max(max_positions, 512),
        )
        self.heads = _ActionHeads(vision_hidden, text_hidden, self.state_dim, num_queries)

    def _build_stored(self, source: PolicyDirectory) -> None:
        """The vision tower, LM and tokenizer of a policy directory (with their weights), and fresh heads."""
        self.vision, self.lm, self.tokenizer = _load_backbone(source.path)
        self.max_instruction_tokens = int(source.meta.get("max_instruction_tokens", self.max_instruction_tokens))
        self.heads = _ActionHeads(self.vision.config.hidden_size, self.lm.config.hidden_size,
                                  self.state_dim, self.chunk_size * self.action_dim)

    # -- its policy directory ---------------------------------------------------------------
    def load_pretrained(self, source: PolicyDirectory | None) -> None:
        """The heads' weights and the action stats (the backbone came with :meth:`_build_stored`)."""
        from safetensors.torch import load_file

        if source is None:
            return
        try:
            self.heads.load_state_dict(load_file(source.path / "heads.safetensors"))
        except (RuntimeError, OSError) as err:
            raise ValueError(f"`policy.pretrained_path`: {source.path}/heads.safetensors does not fit "
                             f"({str(err).strip().splitlines()[0]})") from None
        load_action_stats(self, source.meta)

    def write_weights(self, path: Path) -> None:
        """``vision/``, ``language_model/``, ``tokenizer/`` (transformers' own) and ``heads.safetensors``."""
        from safetensors.torch import save_file

        with _quiet_transformers():
            self.vision.save_pretrained(path / "vision")
            self.lm.save_pretrained(path / "language_model")
            self.tokenizer.save_pretrained(path / "tokenizer")
        save_file({k: v.detach().cpu().contiguous() for k, v in self.heads.state_dict().items()},
                  path / "heads.safetensors")

    def policy_config(self) -> dict:
        return {"max_instruction_tokens": self.max_instruction_tokens}

    def fsdp_units(self) -> list[nn.Module]:
        """What FSDP2 shards as units of their own (``vla_grpo.sharding``): each vision and decoder layer."""
        return [*self.vision.encoder.layers, *self.lm.get_decoder().layers]

    # -- OpenVLA vocab-tail action tokens ------------------------------------------
    def _rebuild_tokenizer(self, vocab_size: int | None = None) -> None:
        from torchrl.data.vla import VocabTailActionTokenizer

        # OpenVLA's codec: window ids, bin centres in [-1, 1], q01/q99 un-normalization
        self.action_tokenizer = VocabTailActionTokenizer(
            self.vocab_size, norm_low=self.action_low.detach().cpu().double(),
            norm_high=self.action_high.detach().cpu().double(),
        )

    @property
    def action_token_ids(self) -> torch.Tensor:
        """LM vocab ids of action tokens ``0..num_bins-1`` (the vocab tail, ``V - num_bins + w``)."""
        vocab = self.lm.get_output_embeddings().weight.shape[0]
        return torch.arange(vocab - self.vocab_size, vocab)

    # -- forward -------------------------------------------------------------------
    def _encode_instructions(self, strings: list[str], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Padded token ids ``[B, T]`` and their mask; tokenization is cached per string."""
        if len(self._token_cache) > _CACHE_SIZE:
            self._token_cache.clear()
        rows = []
        for s in strings:
            if s not in self._token_cache:
                ids = self.tokenizer(s)["input_ids"][: self.max_instruction_tokens]
                self._token_cache[s] = list(ids)
            rows.append(self._token_cache[s])
        width = max(len(r) for r in rows)
        ids = torch.zeros(len(rows), width, dtype=torch.long)
        mask = torch.zeros(len(rows), width, dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
            mask[i, : len(r)] = 1
        return ids.to(device), mask.to(device)

    def _pixel_values(self, image: torch.Tensor) -> torch.Tensor:
        """uint8 ``[B, 3, S, S]`` -> SigLIP input: the tower's size, scaled to [-1, 1]."""
        x = image.float() / 255.0 if image.dtype == torch.uint8 else image.float()
        size = self.vision.config.image_size
        if x.shape[-1] != size or x.shape[-2] != size:
            x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        return (x - 0.5) / 0.5

    def _sequence(self, tensordict: TensorDictBase) -> tuple[torch.Tensor, torch.Tensor]:
        """Input embeddings ``[B, L, D]`` (image, instruction, state, action queries) and key mask ``[B, L]``."""
        image = self._get_image(tensordict)
        image = image.reshape(-1, *image.shape[-3:])
        batch, device = image.shape[0], image.device
        patches = self.vision(pixel_values=self._pixel_values(image)).last_hidden_state
        image_tokens = self.heads.image_projector(patches)
        ids, text_mask = self._encode_instructions(instruction_strings(self._get_instruction(tensordict), batch),
                                                   device)
        text_tokens = self.lm.get_input_embeddings()(ids)
        state = self._get_state(tensordict).reshape(batch, -1).float()
        state_token = self.heads.state_projector(state).unsqueeze(1)
        queries = self.heads.action_queries.unsqueeze(0).expand(batch, -1, -1)
        embeds = torch.cat([image_tokens, text_tokens.to(image_tokens.dtype), state_token.to(image_tokens.dtype),
                            queries.to(image_tokens.dtype)], dim=1)
        ones = lambda n: torch.ones(batch, n, dtype=torch.long, device=device)  # noqa: E731
        mask = torch.cat([ones(image_tokens.shape[1]), text_mask, ones(1 + queries.shape[1])], dim=1)
        return embeds, mask

    def _predict_logits(self, tensordict: TensorDictBase) -> torch.Tensor:
        """Logits ``[*B, H, A, num_bins]`` of the action tokens, from one forward pass."""
        from transformers.masking_utils import create_bidirectional_mask

        batch_shape = self._get_image(tensordict).shape[:-3]
        device = self._get_image(tensordict).device
        # not `autocast(enabled=False)` on CPU: that would switch off a caller's autocast (Lightning's bf16-mixed)
        bf16 = self.bf16 and device.type == "cuda"
        with torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext():
            embeds, mask = self._sequence(tensordict)
            # parallel decoding: bidirectional attention, padded instruction tokens masked out;
            # positions skip the padding so a sample's logits don't depend on its batch-mates
            attention = create_bidirectional_mask(config=self.lm.config, inputs_embeds=embeds, attention_mask=mask,
                                                  allow_is_bidirectional_skip=False)
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            hidden = self.lm.get_decoder()(inputs_embeds=embeds, attention_mask=attention, position_ids=positions,
                                           use_cache=False).last_hidden_state
            queries = hidden[:, -self.chunk_size * self.action_dim:]
            head = self.lm.get_output_embeddings()
            bins = self.vocab_size
            bias = None if head.bias is None else head.bias[-bins:]
            logits = F.linear(queries, head.weight[-bins:], bias)
        return logits.float().reshape(*batch_shape, self.chunk_size, self.action_dim, bins)

    def _predict(self, tensordict: TensorDictBase) -> torch.Tensor:
        return self._predict_logits(tensordict).flatten(-3)


def _check_model_sizes(image_size: int, patch_size: int, vision_hidden: int, text_hidden: int, layers: int,
                       heads: int, text_model: str) -> None:
    check_sizes(patch_size=patch_size, vision_hidden=vision_hidden, text_hidden=text_hidden, layers=layers,
                heads=heads)
    if image_size % patch_size:
        raise ValueError(f"`policy.patch_size` must divide `policy.image_size` {image_size} (got {patch_size})")
    for name, width in (("vision_hidden", vision_hidden), ("text_hidden", text_hidden)):
        # rotary embeddings rotate pairs of channels: the per-head width must be even
        if width % heads or (width // heads) % 2:
            raise ValueError(f"`policy.{name}` / `policy.heads` must be an even integer (got {width} / {heads})")
    if text_model not in _TEXT_MODELS:
        raise ValueError(f"`policy.text_model` must be one of {', '.join(_TEXT_MODELS)} (got {text_model!r})")


__all__ = ["HFVLAPolicy", "NUM_BINS", "POLICY_JSON"]
