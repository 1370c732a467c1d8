"""The paper's reasoning network: a pretrained transformer body between `f_in` and `f_out`.

The LRT paper starts G_phi from a small pretrained model (Qwen3-Embedding-0.6B with its
embedding layer removed) and reports that it trains far more stably than a random network
(DESIGN.md section 4). Its Eq. 5, `z = f_out(G(f_in(H_X) * [r_1..r_K]))`, reads two ways, and
both are offered (`reasoner.layout`):

- `hadamard`: the body's K inputs are `f_in(h_last) * r_i`, where `h_last` is the base's state
  of the last prompt token: the question enters as one vector, modulated per latent.
- `concat`: the body reads `f_in(h)` of every prompt token followed by `r_1..r_K`, attending to
  the whole question; its last K outputs are the latents.

The body keeps its own (causal) attention and positions; only its token embedding goes, since
its inputs are projections, never tokens.
"""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, PreTrainedModel

from lrt.errors import ConfigError
from lrt.reasoner.base import Reasoner, ReasonerConfig, RMSNorm

log = logging.getLogger(__name__)

INIT_FROM_BASE = "base"


def _plain(config: Any) -> dict[str, Any]:
    """A transformers config as JSON-safe primitives (checkpoints load with weights_only)."""
    return json.loads(config.to_json_string(use_diff=False))


def load_body(init_from: str, base: PreTrainedModel | None) -> PreTrainedModel:
    """The pretrained decoder body (no LM head) named by `init_from`, in float32.

    `base` copies the frozen base's own decoder, so the offline default needs no second
    download; a `.gguf` path is dequantized by transformers; anything else is a hub id or a
    local folder for `AutoModel.from_pretrained`.
    """
    if init_from == INIT_FROM_BASE:
        if base is None:
            raise ConfigError("reasoner.init_from=base needs the base model to copy")
        body = copy.deepcopy(base.get_decoder())
    elif init_from.endswith(".gguf"):
        path = Path(init_from).expanduser()
        if not path.is_file():
            raise ConfigError(f"reasoner.init_from={init_from} does not exist")
        body = AutoModel.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    else:
        try:
            body = AutoModel.from_pretrained(init_from, dtype=torch.float32)
        except OSError as err:
            raise ConfigError(
                f"reasoner.init_from={init_from!r} is neither 'base', a local folder, a .gguf "
                f"file nor a reachable hub id: {str(err).splitlines()[0]}"
            ) from err
    return body.float()


def _drop_embedding(body: PreTrainedModel) -> None:
    """The body reads projected states, never tokens: free its (large) token embedding."""
    if not hasattr(body, "embed_tokens"):
        raise ConfigError(
            f"reasoner body {type(body).__name__} has no 'embed_tokens' to drop: "
            "reasoner.init_from must be a decoder-only transformer (Llama, Qwen, Mistral style)"
        )
    body.embed_tokens = None


def _truncate(body: PreTrainedModel, num_layers: int | None) -> None:
    """Keep the first `num_layers` decoder layers (the forward loops over `num_hidden_layers`)."""
    total = len(body.layers)
    if num_layers is None or num_layers == total:
        return
    if num_layers > total:
        raise ConfigError(f"reasoner.num_layers={num_layers} exceeds the body's {total} layers")
    body.layers = body.layers[:num_layers]
    body.config.num_hidden_layers = num_layers
    if isinstance(getattr(body.config, "layer_types", None), list):
        body.config.layer_types = body.config.layer_types[:num_layers]


def body_from_config(raw: dict[str, Any]) -> PreTrainedModel:
    """Rebuild a body from its recorded config (weights are loaded afterwards).

    The vocabulary is shrunk to one row before building: the embedding is dropped anyway, and a
    full one (150k x 1024 for Qwen3) would be allocated and initialised for nothing.
    """
    raw = {**raw, "vocab_size": 1, "pad_token_id": None, "bos_token_id": None, "eos_token_id": None}
    config = AutoConfig.for_model(raw.pop("model_type"), **raw)
    body = AutoModel.from_config(config, dtype=torch.float32)
    _drop_embedding(body)
    return body


class PretrainedReasoner(Reasoner):
    """`arch: pretrained`: `f_in: d -> d_r`, a pretrained body of width `d_r`, `f_out: d_r -> d`."""

    def __init__(
        self, config: ReasonerConfig, body: PreTrainedModel | None = None, input_rms: float = 1.0
    ) -> None:
        """`body` is the prepared pretrained body; None rebuilds it from `config.body_config`.

        `input_rms` is the RMS of the body's own token embeddings: `f_in` and the `r_i` start
        so that the body's inputs have that scale, the one its first layer was trained on.
        """
        super().__init__(config)
        if body is None:
            assert config.body_config is not None
            body = body_from_config(config.body_config)
        self.body = body
        d, d_r = config.base_hidden_size, int(body.config.hidden_size)
        self.in_norm = RMSNorm(d)  # the base's last-layer states have outlier dimensions
        self.f_in = nn.Linear(d, d_r)
        nn.init.normal_(self.f_in.weight, std=input_rms / d**0.5)
        nn.init.zeros_(self.f_in.bias)
        if config.layout == "hadamard":
            # Near 1, so every latent starts as f_in(h_last), told apart by small differences.
            latents = 1.0 + 0.02 * torch.randn(config.num_latents, d_r)
        else:
            latents = input_rms * torch.randn(config.num_latents, d_r)  # like token embeddings
        self.latent_inputs = nn.Parameter(latents)
        self.f_out = nn.Linear(d_r, d)
        nn.init.normal_(self.f_out.weight, std=0.02)
        nn.init.zeros_(self.f_out.bias)
        self.out_norm = RMSNorm(d, init_gain=config.embed_rms)

    def shard_units(self) -> list[nn.Module]:
        return list(self.body.layers)

    @classmethod
    def create(
        cls, config: ReasonerConfig, base: PreTrainedModel | None = None
    ) -> PretrainedReasoner:
        """A new reasoner whose body holds `config.init_from`'s pretrained weights, or, for a
        config that records its `body_config` (a saved reasoner), the bare body to load into."""
        if config.body_config is not None:
            return cls(config)
        assert config.init_from is not None
        body = load_body(config.init_from, base)
        embedding = body.get_input_embeddings()
        input_rms = float(embedding.weight.detach().float().pow(2).mean(-1).sqrt().mean())
        _drop_embedding(body)
        _truncate(body, config.num_layers)
        body.requires_grad_(True)
        body.train()
        config.body_config = _plain(body.config)
        log.info(
            "reasoner body from %s: %d layers of width %d",
            config.init_from,
            len(body.layers),
            body.config.hidden_size,
        )
        return cls(config, body, input_rms)

    def _inputs(
        self, hidden: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The body's input embeddings and attention mask for the configured layout."""
        states = self.f_in(self.in_norm(hidden.to(self.f_in.weight.dtype)))
        b, k = hidden.shape[0], self.config.num_latents
        latents = self.latent_inputs.unsqueeze(0).expand(b, -1, -1)
        if self.config.layout == "hadamard":
            # The last real prompt token (prompts are left-padded, but do not rely on it).
            positions = torch.arange(mask.shape[1], device=mask.device)
            last = (mask.bool() * (positions + 1)).argmax(-1)
            h_last = states[torch.arange(b, device=states.device), last]
            return h_last.unsqueeze(1) * latents, mask.new_ones(b, k)
        return torch.cat([states, latents], dim=1), torch.cat([mask, mask.new_ones(b, k)], dim=1)

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        embeds, attention = self._inputs(hidden, mask)
        positions = (attention.long().cumsum(-1) - 1).clamp(min=0)
        out = self.body(
            inputs_embeds=embeds,
            attention_mask=attention,
            position_ids=positions,
            use_cache=False,
        ).last_hidden_state
        return self.out_norm(self.f_out(out[:, -self.config.num_latents :]))
