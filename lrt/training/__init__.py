"""Training stages: one LightningModule per stage (SFT, GRPO) sharing the optimiser set-up."""
