"""Datasets as `Record` lists: task registry, loaders and the synthetic arithmetic task."""

from lrt.data.arith import generate_arith
from lrt.data.records import Record
from lrt.data.tasks import TASKS, load_task

__all__ = ["TASKS", "Record", "generate_arith", "load_task"]
