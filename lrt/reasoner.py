"""The reasoning network G_phi: question hidden states in, K latent vectors out, one pass.

Two architectures share one config, one save format and one base-model check:

- `query` (our default, DESIGN.md section 1, step 2): K learned queries read the frozen base's
  hidden states through cross-attention, in a small randomly initialised network.
- `pretrained` (the paper's, DESIGN.md section 4): a pretrained transformer body with its token
  embedding dropped, fed through `f_in` and read out through `f_out` (`lrt.pretrained_reasoner`).

Either way the output goes through an RMS norm whose gain starts at the base's mean
token-embedding RMS, so the latents enter the base at the scale of the inputs it was trained on.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from lrt.errors import CheckpointError, ConfigError, reject_unknown_keys

if TYPE_CHECKING:
    from transformers import PreTrainedModel

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
ARCHS = ("query", "pretrained")
LAYOUTS = ("hadamard", "concat")


@dataclass
class ReasonerConfig:
    """Shape of G_phi plus the identity of the base model it was built for."""

    num_latents: int = 8
    width: int = 256
    depth: int = 2
    heads: int = 4
    mlp_ratio: float = 4.0
    dropout: float = 0.0
    source_layer: int = -1
    """Which hidden-state layer of the base to read (-1: last layer, 0: embeddings)."""
    arch: str = "query"
    init_from: str | None = None
    """`pretrained` only: where the body's weights come from: `base` (the frozen base's own
    weights), a hub id, a local folder, or a `.gguf` file."""
    layout: str = "hadamard"
    """`pretrained` only: `hadamard` (f_in(h_last) * r_i, one input per latent) or `concat`
    (f_in(H) of every prompt token, then the r_i; the last K outputs are the latents)."""
    num_layers: int | None = None
    """`pretrained` only: keep the body's first `num_layers` layers (null: all of them)."""
    body_config: dict[str, Any] | None = None
    """`pretrained` only: the body's transformers config, recorded when the weights are first
    loaded so a saved reasoner rebuilds without going back to `init_from`."""
    base_model: str = ""
    base_hidden_size: int = 0
    embed_rms: float = 1.0
    base_config: dict[str, Any] | None = None
    """The base model's `model` config group, so `evaluate.py` can load the base itself when
    no `model=` is given."""

    def __post_init__(self) -> None:
        for key in ("num_latents", "width", "depth", "heads"):
            if int(getattr(self, key)) <= 0:
                raise ConfigError(f"reasoner.{key}={getattr(self, key)} must be a positive integer")
        if self.width % self.heads:
            raise ConfigError(
                f"reasoner.width={self.width} is not divisible by reasoner.heads={self.heads}"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"reasoner.dropout={self.dropout} must be in [0, 1)")
        if self.arch not in ARCHS:
            raise ConfigError(f"reasoner.arch={self.arch!r} is not one of {ARCHS}")
        if self.arch == "pretrained":
            if self.layout not in LAYOUTS:
                raise ConfigError(f"reasoner.layout={self.layout!r} is not one of {LAYOUTS}")
            if self.num_layers is not None and int(self.num_layers) <= 0:
                raise ConfigError(
                    f"reasoner.num_layers={self.num_layers} must be a positive integer or null"
                )
            if not self.init_from and self.body_config is None:
                raise ConfigError(
                    "reasoner.init_from must name the pretrained body (base, a hub id, a folder "
                    "or a .gguf file) when reasoner.arch='pretrained'"
                )

    @classmethod
    def from_dict(cls, raw: dict[str, Any], where: str = "reasoner") -> ReasonerConfig:
        reject_unknown_keys(raw, (f.name for f in fields(cls)), where)
        return cls(**raw)


class RMSNorm(nn.Module):
    """RMS normalisation with a learned per-dimension gain."""

    def __init__(self, dim: int, init_gain: float = 1.0, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.full((dim,), float(init_gain)))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return (normed * self.weight.float()).to(x.dtype)


class ReasonerBlock(nn.Module):
    """Pre-norm block: self-attention among queries, cross-attention to H, MLP."""

    def __init__(self, width: int, heads: int, mlp_ratio: float, dropout: float) -> None:
        super().__init__()
        self.self_norm = nn.LayerNorm(width)
        self.self_attn = nn.MultiheadAttention(width, heads, dropout=dropout, batch_first=True)
        self.cross_norm = nn.LayerNorm(width)
        self.cross_attn = nn.MultiheadAttention(width, heads, dropout=dropout, batch_first=True)
        self.mlp_norm = nn.LayerNorm(width)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(
            nn.Linear(width, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, width)
        )

    def forward(self, q: torch.Tensor, memory: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        h = self.self_norm(q)
        q = q + self.self_attn(h, h, h, need_weights=False)[0]
        h = self.cross_norm(q)
        q = q + self.cross_attn(h, memory, memory, key_padding_mask=pad, need_weights=False)[0]
        return q + self.mlp(self.mlp_norm(q))


class Reasoner(nn.Module):
    """G_phi: `(H [B, n, d], mask [B, n]) -> Z [B, K, d]`; what every architecture shares.

    Subclasses build the network from `config` and implement `forward`; saving, loading and the
    check that a reasoner is loaded onto the base it was trained for live here.
    """

    config: ReasonerConfig

    def __init__(self, config: ReasonerConfig) -> None:
        super().__init__()
        if config.base_hidden_size <= 0:
            raise ConfigError("reasoner.base_hidden_size must be set from the base model")
        self.config = config

    @property
    def num_latents(self) -> int:
        return self.config.num_latents

    def shard_units(self) -> list[nn.Module]:
        """The layers FSDP shards one by one (the rest of the reasoner is sharded as a whole)."""
        return list(getattr(self, "blocks", []))

    def save_pretrained(
        self, directory: str | Path, state_dict: dict[str, torch.Tensor] | None = None
    ) -> Path:
        """Write `config.json` and `model.safetensors` (no pickle, loadable anywhere).

        `state_dict` is the full weights when this module's own are shards (FSDP)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        source = self.state_dict() if state_dict is None else state_dict
        state = {k: v.detach().contiguous().cpu() for k, v in source.items()}
        save_file(state, directory / WEIGHTS_NAME, metadata={"format": "pt"})
        (directory / CONFIG_NAME).write_text(json.dumps(asdict(self.config), indent=2) + "\n")
        return directory

    @classmethod
    def from_pretrained(
        cls,
        directory: str | Path,
        base_model: str | None = None,
        base_hidden_size: int | None = None,
    ) -> Reasoner:
        """Load a saved reasoner of either architecture; refuse one built for another base."""
        directory = Path(directory)
        config = read_config(directory)
        if base_model is not None and config.base_model != base_model:
            raise CheckpointError(
                f"reasoner {directory} was trained for base model {config.base_model!r}, "
                f"not {base_model!r}"
            )
        if base_hidden_size is not None and config.base_hidden_size != base_hidden_size:
            raise CheckpointError(
                f"reasoner {directory} was trained for a base of hidden size "
                f"{config.base_hidden_size}, not {base_hidden_size}"
            )
        model = reasoner_for(config)
        try:
            state = load_file(directory / WEIGHTS_NAME)
        except Exception as err:  # safetensors raises several types for a damaged file
            raise CheckpointError(
                f"{directory / WEIGHTS_NAME} is not a readable safetensors file: {err}"
            ) from err
        try:
            model.load_state_dict(state)
        except RuntimeError as err:
            raise CheckpointError(
                f"{directory / WEIGHTS_NAME} does not match {directory / CONFIG_NAME}"
            ) from err
        return model


class QueryReasoner(Reasoner):
    """K learned queries cross-attending to the base's hidden states (`arch: query`)."""

    def __init__(self, config: ReasonerConfig) -> None:
        super().__init__(config)
        d, w = config.base_hidden_size, config.width
        # Last-layer states of LLMs carry a few huge outlier dimensions; normalise before f_in.
        self.in_norm = RMSNorm(d)
        self.f_in = nn.Linear(d, w)
        self.queries = nn.Parameter(torch.randn(config.num_latents, w) * 0.02)
        self.blocks = nn.ModuleList(
            ReasonerBlock(w, config.heads, config.mlp_ratio, config.dropout)
            for _ in range(config.depth)
        )
        self.final_norm = nn.LayerNorm(w)
        self.f_out = nn.Linear(w, d)
        nn.init.normal_(self.f_out.weight, std=0.02)
        nn.init.zeros_(self.f_out.bias)
        self.out_norm = RMSNorm(d, init_gain=config.embed_rms)

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        memory = self.f_in(self.in_norm(hidden.to(self.f_in.weight.dtype)))
        q = self.queries.unsqueeze(0).expand(hidden.shape[0], -1, -1)
        pad = ~mask.bool()
        for block in self.blocks:
            q = block(q, memory, pad)
        return self.out_norm(self.f_out(self.final_norm(q)))


def reasoner_for(config: ReasonerConfig, base: PreTrainedModel | None = None) -> Reasoner:
    """A reasoner of `config.arch`; a new `pretrained` one loads its body from `init_from`.

    `base` is the frozen base model, needed only for `init_from: base`. A config that already
    records its `body_config` (a saved reasoner) rebuilds the body without loading weights.
    """
    if config.arch == "query":
        return QueryReasoner(config)
    from lrt.pretrained_reasoner import PretrainedReasoner

    if config.body_config is not None:
        return PretrainedReasoner(config)
    return PretrainedReasoner.initialise(config, base)


def read_config(directory: str | Path) -> ReasonerConfig:
    """Read a reasoner folder's `config.json` with a clear error when it is missing or damaged."""
    path = Path(directory) / CONFIG_NAME
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist: not a reasoner folder")
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path} is not valid JSON: {err.msg} at line {err.lineno}") from err
    return ReasonerConfig.from_dict(raw, where=str(path))


def build_reasoner(
    raw: dict[str, Any],
    base_model: str,
    hidden_size: int,
    embed_rms: float,
    base: PreTrainedModel | None = None,
    base_config: dict[str, Any] | None = None,
) -> Reasoner:
    """Build a fresh reasoner from the `reasoner` config group for a given base.

    `base` (the frozen base model) is what `arch: pretrained` with `init_from: base` copies;
    `base_config` (its `model` config) is recorded with the reasoner.
    """
    config = ReasonerConfig.from_dict(
        {
            **raw,
            "base_model": base_model,
            "base_hidden_size": hidden_size,
            "embed_rms": embed_rms,
            "base_config": base_config,
        }
    )
    return reasoner_for(config, base)
