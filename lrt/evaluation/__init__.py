"""Evaluation: `predict` (decode and grade in one mode), `metrics`, `discovery` (what a user
points at, turned into models) and `run` (a whole `conf/evaluate.yaml` composition)."""

from lrt.evaluation.discovery import find_reasoners
from lrt.evaluation.metrics import accuracy, mean_tokens, pass_at_k, summarize
from lrt.evaluation.predict import mode_rows, predict
from lrt.evaluation.prediction import Prediction
from lrt.evaluation.run import evaluate, load_tasks, validate_evaluate

__all__ = [
    "Prediction",
    "accuracy",
    "evaluate",
    "find_reasoners",
    "load_tasks",
    "mean_tokens",
    "mode_rows",
    "pass_at_k",
    "predict",
    "summarize",
    "validate_evaluate",
]
