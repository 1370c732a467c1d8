"""STIR (Self-Distilled Tools for Internal Reasoning, arXiv 2602.04925) in the same harness.

A training-free latent-steering method beside LRT: `train.py stage=stir` mines contrastive
steering vectors from the frozen base's own correct and incorrect rollouts on training
questions (`rollouts`, `mining`), keeps a small diverse library of them by greedy DPP
(`selection`, `library`), and `evaluate.py modes=[stir] stir_library=<folder>` decodes with
Retrieve-Preview-Commit at each reasoning segment (`steering`, `decode`). `../shared/STIR.md`
describes the method and every setting; the keys are in `conf/stage/stir.yaml`.
"""
