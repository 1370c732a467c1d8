"""What every reasoning network G_phi shares: its config, save format and interface.

G_phi maps the frozen base's hidden states of a question `(H [B, n, d], mask [B, n])` to K
latent vectors `Z [B, K, d]` in one forward pass (DESIGN.md section 1, step 2). The
architectures live beside this file (`query.py`, `pretrained.py`); `lrt.reasoner` builds and
loads either through one registry. Every architecture ends in an RMS norm whose gain starts at
the base's mean token-embedding RMS, so the latents enter the base at the scale of the inputs
it was trained on.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from lrt.errors import CheckpointError, ConfigError, reject_unknown_keys

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
ARCHS = ("query", "pretrained", "prompt")
LAYOUTS = ("hadamard", "concat")
ATTENDS = ("question", "prompt")
RESIDUAL_GATE_INIT = 0.1


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
    attend: str = "prompt"
    """Which positions of the encoded prompt the network reads: `question` (the user's own
    text, the chat template around it masked out) or `prompt` (every position, as reasoners
    saved before this key did)."""
    token_residual: bool = False
    """Latent i starts as the input embedding of the question's i-th token (the user's text,
    the first K tokens), the network's output added through a learned gate (initialised at
    0.1): a channel the frozen base reads from the first step, since it reads its own
    token embeddings (DESIGN.md section 5, "a residual path from the question's token
    embeddings into Z"). Latents past the question's end are the network's alone."""
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
        if self.attend not in ATTENDS:
            raise ConfigError(f"reasoner.attend={self.attend!r} is not one of {ATTENDS}")
        if self.token_residual and self.arch != "query":
            raise ConfigError(
                f"reasoner.token_residual=true needs reasoner.arch='query', not {self.arch!r} "
                "(the question-blind control must not copy the question)"
            )
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
            source = self.init_from
            looks_local = source and (
                source.endswith(".gguf") or source.startswith(("/", ".", "~"))
            )
            # A saved reasoner records its body (body_config) and never reads init_from again.
            if self.body_config is None and looks_local and not Path(source).expanduser().exists():
                raise ConfigError(f"reasoner.init_from={source} does not exist")

    @classmethod
    def from_dict(cls, raw: dict[str, Any], where: str = "reasoner") -> ReasonerConfig:
        reject_unknown_keys(raw, (f.name for f in fields(cls)), where)
        return cls(**raw)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


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
        if config.token_residual:
            self.residual_gate = nn.Parameter(torch.tensor(RESIDUAL_GATE_INIT))

    def add_tokens(self, latents: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """`latents` with the question's token embeddings `tokens` ([B, K, d], zero past the
        question's end) as their residual (`token_residual`): a slot holding a token is that
        token plus the gated output, a slot past the end the output alone."""
        has = tokens.ne(0).any(-1, keepdim=True).to(latents.dtype)
        gate = self.residual_gate.to(latents.dtype)
        return tokens.to(latents.dtype) + (has * gate + (1 - has)) * latents

    @property
    def num_latents(self) -> int:
        return self.config.num_latents

    @classmethod
    def create(cls, config: ReasonerConfig, base: Any = None) -> Reasoner:
        """A new reasoner of this architecture; `base` is the frozen base model, which an
        architecture may copy weights from (`pretrained` with `init_from: base`)."""
        return cls(config)

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


def latent_spread(latents: torch.Tensor) -> float:
    """How much the latents differ across the questions of a batch: the mean distance of each
    question's latent vectors from the batch's mean ones, relative to their mean norm.

    0 for latents that ignore the question (a learned prompt); a collapse towards it shows as
    a fall (DESIGN.md section 5). NaN for a batch of one question.
    """
    z = latents.detach().float()
    if z.shape[0] < 2:
        return float("nan")
    spread = (z - z.mean(0, keepdim=True)).norm(dim=-1).mean()
    return float(spread / z.norm(dim=-1).mean().clamp(min=1e-12))
