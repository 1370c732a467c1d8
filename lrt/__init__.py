"""lrt: Latent Reasoning Tuning on a frozen LLM."""

__version__ = "0.1.0"
