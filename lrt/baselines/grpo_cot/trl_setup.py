"""What TRL is given: the prompts (the same text `cot` mode decodes from), its `GRPOConfig`
translated from our settings, and peft's `LoraConfig`. Nothing here reimplements GRPO."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

from lrt.baselines.grpo_cot.settings import GRPOCoTSettings, LoraSettings
from lrt.data.prompts import format_prompt
from lrt.data.records import Record
from lrt.errors import ConfigError


def cot_prompt(prompt_text: str, think_open: str, tokenizer: Any) -> str:
    """The prompt TRL tokenizes: the chat-templated text plus the thinking marker (unless the
    template already ends with it, as DeepSeek-R1-Distill's does), minus a leading BOS that the
    tokenizer adds again itself (TRL tokenizes with special tokens)."""
    text = prompt_text if prompt_text.endswith(think_open) else prompt_text + think_open
    bos = tokenizer.bos_token
    if bos and text.startswith(bos):
        ids = tokenizer("a").input_ids
        if ids and ids[0] == tokenizer.bos_token_id:
            text = text[len(bos) :]
    return text


def build_dataset(
    records: Sequence[Record], tokenizer: Any, prompt: Any, system: str | None, think_open: str
) -> Any:
    """`datasets.Dataset` of `{"prompt", "record_index"}` rows, the same prompts as `cot` mode."""
    from datasets import Dataset

    rows = [
        {
            "prompt": cot_prompt(
                format_prompt(tokenizer, r, prompt, system), think_open, tokenizer
            ),
            "record_index": i,
        }
        for i, r in enumerate(records)
    ]
    return Dataset.from_list(rows)


REPORT_TO = {"wandb": "wandb", "tensorboard": "tensorboard"}
"""lrt logger names that TRL reports to itself; `csv` is written by `MetricsCSV`."""


def report_targets(logger_cfg: Mapping[str, Any] | None) -> list[str]:
    """TRL `report_to` from the chosen lrt loggers (csv is ours, so it maps to nothing)."""
    return [REPORT_TO[name] for name in (logger_cfg or {}) if name in REPORT_TO]


def trl_config(
    settings: GRPOCoTSettings,
    output_dir: Path,
    seed: int,
    report_to: Sequence[str],
    run_name: str,
    world_size: int = 1,
    progress_bar: bool = True,
) -> Any:
    """TRL's `GRPOConfig` from our settings.

    TRL counts batches in completions: an optimiser step takes `per_device_train_batch_size x
    gradient_accumulation_steps x world_size` of them, which must be `batch_size` questions x
    `num_generations`; `micro_batch_size` completions go through each forward/backward pass.
    """
    import torch
    from trl import GRPOConfig

    micro = settings.micro_batch_size or settings.completions_per_step
    if settings.completions_per_step % (micro * world_size):
        raise ConfigError(
            f"stage.batch_size x stage.num_generations = {settings.completions_per_step} "
            f"completions per step must split into stage.micro_batch_size={micro} on each of "
            f"{world_size} processes"
        )
    return GRPOConfig(
        output_dir=str(output_dir),
        run_name=run_name,
        max_steps=settings.max_steps,
        per_device_train_batch_size=micro,
        gradient_accumulation_steps=settings.completions_per_step // (micro * world_size),
        num_generations=settings.num_generations,
        max_completion_length=settings.max_completion_length,
        temperature=settings.temperature,
        top_p=settings.top_p,
        learning_rate=settings.learning_rate,
        lr_scheduler_type=settings.lr_scheduler_type,
        warmup_steps=settings.warmup_steps,
        weight_decay=settings.weight_decay,
        max_grad_norm=settings.max_grad_norm,
        beta=settings.beta,
        loss_type=settings.loss_type,
        scale_rewards=settings.scale_rewards,
        epsilon=settings.epsilon,
        epsilon_high=settings.epsilon_high,
        num_iterations=settings.num_iterations,
        mask_truncated_completions=settings.mask_truncated_completions,
        **{_checkpointing_field(GRPOConfig): settings.gradient_checkpointing},
        bf16=settings.bf16,
        logging_steps=settings.logging_steps,
        save_strategy="steps",
        save_steps=settings.save_steps,
        save_total_limit=settings.save_total_limit,
        log_completions=settings.log_completions,
        report_to=list(report_to) or "none",
        seed=seed,
        data_seed=seed,
        use_cpu=not torch.cuda.is_available(),
        disable_tqdm=not progress_bar,
        remove_unused_columns=False,  # the reward needs record_index
        **settings.trl,
    )


def _checkpointing_field(config_cls: type) -> str:
    """transformers 5.x renamed `gradient_checkpointing` to `activation_checkpointing` (the old
    name warns); use whichever this version has."""
    new = "activation_checkpointing"
    return new if new in {f.name for f in fields(config_cls)} else "gradient_checkpointing"


def lora_config(lora: LoraSettings) -> Any:
    from peft import LoraConfig

    return LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora.target_modules,
        task_type="CAUSAL_LM",
    )
