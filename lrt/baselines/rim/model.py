"""The base with RiM's memory blocks: the one-pass training forward and `rim` decoding.

`RiMLM` is a `LatentLM` (same prompt encode, KV cache and decoder, so `rim` rows are decoded
and timed exactly like every other mode) whose thinking span is K memory blocks: the prompt is
encoded, the K blocks go through the model in one pass on top of its cache, and the answer is
decoded after the last block. No thought is generated, so the time to first token is the
prompt's encode plus one pass over K * (M + 2) positions.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from lrt.adapter import check_base, write_meta
from lrt.backbone import Backbone
from lrt.baselines.rim.layout import Layout
from lrt.baselines.rim.lora import add_lora, lora_dropouts, save_lora
from lrt.baselines.rim.memory import MemoryBlocks
from lrt.baselines.rim.settings import RiMSettings
from lrt.errors import CheckpointError
from lrt.lm.decoding import Decoder, Generation
from lrt.lm.latent_lm import LatentLM
from lrt.lm.logprobs import token_logprobs
from lrt.lm.prefix import Prefix
from lrt.lm.sampling import RowNoise

MODE = "rim"


class RiMLM(LatentLM):
    """The base (with LoRA injected while training, merged for evaluation) and its blocks."""

    def __init__(self, backbone: Backbone, memory: MemoryBlocks, num_blocks: int) -> None:
        super().__init__(backbone)
        self.memory = memory
        self.num_blocks = num_blocks

    def train(self, mode: bool = True) -> RiMLM:
        """The base stays in eval mode (`LatentLM.train`), but the adapters' dropout follows
        the module: it is part of what RiM trains."""
        super().train(mode)
        for layer in lora_dropouts(self.base):
            layer.train(mode)
        return self

    def span_positions(self, mode: str, opened: bool = False) -> int:
        if mode == MODE:
            return self.num_blocks * self.memory.block_size
        return super().span_positions(mode, opened)

    # --- training ------------------------------------------------------------------------------

    def layout_embeds(self, input_ids: torch.Tensor, layout: Layout) -> torch.Tensor:
        """Input embeddings of `[prompt, blocks, readouts]`, [B, T, d]."""
        b = input_ids.shape[0]
        return torch.cat(
            [
                self.backbone.embed(input_ids),
                self.memory(layout.num_blocks, b, self.base.dtype),
                self.backbone.embed(layout.readout_ids),
            ],
            dim=1,
        )

    def layout_hidden(self, embeds: torch.Tensor, layout: Layout) -> torch.Tensor:
        """The decoder's last hidden states [B, T, d] over `embeds` under the layout's mask."""
        return self.base.get_decoder()(
            inputs_embeds=embeds,
            attention_mask=layout.additive_mask(embeds.dtype),
            position_ids=layout.position_ids,
            use_cache=False,
        ).last_hidden_state

    def readout_logprobs(self, input_ids: torch.Tensor, layout: Layout) -> torch.Tensor:
        """Log-probs of every readout token [B, R] (0 on padding), all in one forward pass
        over prompt, blocks and readouts under the layout's 4D mask; gradients reach the LoRA
        adapters and the block embeddings."""
        hidden = self.layout_hidden(self.layout_embeds(input_ids, layout), layout)
        index = layout.predict_at.unsqueeze(-1).expand(-1, -1, hidden.shape[-1])
        head = self.base.get_output_embeddings()
        logp = token_logprobs(head, hidden.gather(1, index), layout.readout_ids)
        return logp * layout.target_mask

    # --- decoding ------------------------------------------------------------------------------

    @torch.no_grad()
    def generate(
        self,
        prefix: Prefix,
        mode: str,
        latents: torch.Tensor | None = None,
        max_answer_tokens: int = 32,
        budget: int = 256,
        force_answer: str = "The answer is",
        temperature: float = 0.0,
        top_p: float = 1.0,
        noise: RowNoise | None = None,
        all_done: Callable[[bool], bool] | None = None,
    ) -> Generation:
        """`rim`: the K blocks in one pass after the prompt, then the answer; other modes as
        `LatentLM.generate` (on this model, adapters included)."""
        if mode != MODE:
            return super().generate(
                prefix, mode, latents, max_answer_tokens, budget, force_answer,
                temperature, top_p, noise, all_done,
            )  # fmt: skip
        b = prefix.batch_size
        work = prefix.fork()
        blocks = self.memory(self.num_blocks, b, self.base.dtype)
        out, mask = self._forward_suffix(
            work, blocks, prefix.mask.new_ones(b, blocks.shape[1]), logits_to_keep=1
        )
        decoder = Decoder(self, b, False, budget, max_answer_tokens, force_answer)
        if temperature > 0 and noise is None:
            noise = RowNoise(0, torch.arange(b, device=self.device))
        return decoder.run(
            work.cache, mask, out[:, -1].float(), temperature, top_p, noise, all_done
        )

    # --- saving --------------------------------------------------------------------------------

    def save(self, folder: Path, settings: RiMSettings) -> None:
        """A peft adapter folder plus the block embeddings and `lrt_adapter.json` (the base
        model's name and the block layout), which `load_rim` reads back."""
        folder = Path(folder)
        save_lora(self.base, folder)
        self.memory.save(folder)
        write_meta(
            folder,
            self.backbone.name,
            method=MODE,
            base_config=asdict(self.backbone.config),
            **layout_meta(settings),
        )


def layout_meta(settings: RiMSettings) -> dict[str, Any]:
    """What decoding needs to rebuild the blocks, recorded beside the adapter."""
    return {
        "num_blocks": settings.num_blocks,
        "memory_tokens": settings.memory_tokens,
        "markers": list(settings.markers),
        "lora_r": settings.lora_r,
    }


def build_rim(backbone: Backbone, settings: RiMSettings) -> RiMLM:
    """The base with fresh LoRA adapters injected and block embeddings at their markers'."""
    dropout = max(settings.grounding_dropout, settings.refinement_dropout)
    memory = MemoryBlocks.from_markers(backbone, settings.markers, settings.memory_tokens)
    add_lora(backbone.model, settings.lora_r, settings.lora_alpha, settings.lora_targets, dropout)
    return RiMLM(backbone, memory, settings.num_blocks)


def read_meta(folder: Path, base_model: str) -> dict[str, Any]:
    """`lrt_adapter.json` of a RiM adapter, checked to belong to `base_model`."""
    check_base(folder, base_model)
    path = Path(folder) / "lrt_adapter.json"
    meta = json.loads(path.read_text()) if path.is_file() else {}
    if meta.get("method") != MODE:
        raise CheckpointError(
            f'{folder} is not a RiM adapter: {path.name} has no "method": "{MODE}"'
        )
    return meta
