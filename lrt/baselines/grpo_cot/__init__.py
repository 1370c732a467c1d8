"""The token-space RL baseline: TRL's GRPO on LoRA adapters of the base, over explicit CoT."""
