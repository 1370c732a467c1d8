"""LoRA adapters on the base itself, through peft, written as a peft adapter folder.

The adapters are injected into the loaded model in place (`inject_adapter_in_model`), so the
composition code sees the same causal LM, and the base's weights on disk are never written.
The folder is what `PeftModel.save_pretrained` writes (`adapter_config.json`,
`adapter_model.safetensors`), so `lrt.adapter.merged_backbone` loads it for evaluation like
grpo_cot's, with the same base-model check.
"""

from __future__ import annotations

from pathlib import Path

from safetensors.torch import load_file, save_file
from torch import nn

from lrt.errors import CheckpointError, one_line

PEFT_PREFIX = "base_model.model."
"""Where `PeftModel` keeps the wrapped model: the prefix of every key of its adapter files."""
WEIGHTS = "adapter_model.safetensors"


def add_lora(model: nn.Module, r: int, alpha: float, targets: list[str], dropout: float) -> None:
    """Inject trainable LoRA adapters (B at zero: the model starts as the base)."""
    from peft import LoraConfig, inject_adapter_in_model

    target = targets[0] if targets == ["all-linear"] else list(targets)
    config = LoraConfig(r=r, lora_alpha=alpha, target_modules=target, lora_dropout=dropout)
    inject_adapter_in_model(config, model)


def lora_dropouts(model: nn.Module) -> list[nn.Dropout]:
    """The adapters' dropout layers (none when they were built with dropout 0)."""
    return [
        m
        for name, m in model.named_modules()
        if "lora_dropout" in name and isinstance(m, nn.Dropout)
    ]


def set_dropout(model: nn.Module, p: float) -> None:
    for layer in lora_dropouts(model):
        layer.p = p


def save_lora(model: nn.Module, folder: Path) -> None:
    """Write `model`'s adapters as a peft adapter folder."""
    from peft import get_peft_model_state_dict

    folder.mkdir(parents=True, exist_ok=True)
    state = get_peft_model_state_dict(model)
    save_file(
        {PEFT_PREFIX + k: v.detach().cpu().contiguous() for k, v in state.items()},
        str(folder / WEIGHTS),
    )
    model.peft_config["default"].save_pretrained(str(folder))


def load_lora(model: nn.Module, folder: Path) -> None:
    """Load the adapter weights of `folder` into `model`'s injected adapters (same layout)."""
    from peft import set_peft_model_state_dict

    try:
        saved = load_file(str(Path(folder) / WEIGHTS))
    except Exception as err:  # safetensors raises several types for a missing or damaged file
        raise CheckpointError(f"{folder}/{WEIGHTS} cannot be read: {one_line(err)}") from err
    state = {k.removeprefix(PEFT_PREFIX): v for k, v in saved.items()}
    try:
        result = set_peft_model_state_dict(model, state)
    except RuntimeError as err:  # a shape mismatch: another rank or base
        raise CheckpointError(f"{folder}: adapter weights do not fit: {one_line(err)}") from err
    own = {n for n, p in model.named_parameters() if p.requires_grad and "lora_" in n}
    missing = sorted(own & set(result.missing_keys))
    if missing or result.unexpected_keys:
        raise CheckpointError(
            f"{folder}: adapter weights do not match this run's LoRA layout (missing "
            f"{missing[:2]}, unexpected {sorted(result.unexpected_keys)[:2]}): check "
            "stage.lora_r and stage.lora_targets"
        )
