"""Callbacks and checkpoint I/O: reasoner export, crash-safe checkpoints, stopping on signals."""

from __future__ import annotations

import contextlib
import csv
import logging
import os
import signal
import tempfile
import threading
from pathlib import Path
from types import FrameType
from typing import Any

import lightning as L
import torch
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.loggers import CSVLogger, Logger
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities.exceptions import SIGTERMException

from lrt.distributed import checksum, full_state_dict, gather_objects
from lrt.errors import CheckpointError
from lrt.training.base import StageModule

log = logging.getLogger(__name__)


class ReasonerExport(L.Callback):
    """Writes `<run>/reasoner/best` whenever `monitor` improves and `<run>/reasoner/final`.

    Every rank gathers the reasoner's full weights (a collective under FSDP, where each rank
    holds a shard); rank 0 writes them. The decision to export is the same on every rank,
    since the monitored validation accuracy is summed over ranks before it is logged.
    """

    def __init__(self, directory: str | Path, monitor: str = "val/accuracy") -> None:
        self.directory = Path(directory)
        self.monitor = monitor
        self.best: float | None = None

    def _export(self, trainer: L.Trainer, pl_module: StageModule, name: str) -> None:
        state = full_state_dict(pl_module.reasoner)
        if trainer.is_global_zero:
            pl_module.reasoner.save_pretrained(self.directory / name, state_dict=state)

    def on_validation_end(self, trainer: L.Trainer, pl_module: StageModule) -> None:
        value = trainer.callback_metrics.get(self.monitor)
        if trainer.sanity_checking or value is None:
            return
        if self.best is None or float(value) > self.best:
            self.best = float(value)
            self._export(trainer, pl_module, "best")

    def on_train_end(self, trainer: L.Trainer, pl_module: StageModule) -> None:
        self._export(trainer, pl_module, "final")

    def state_dict(self) -> dict:
        return {"best": self.best}

    def load_state_dict(self, state_dict: dict) -> None:
        self.best = state_dict.get("best")


class RankConsistencyCheck(L.Callback):
    """At the end of data-parallel training, check every rank holds the same reasoner.

    DDP keeps replicas equal only if every rank steps identically; a rank-dependent code path
    (a skipped batch, a different clip) silently splits them. Each rank digests the reasoner's
    full weights (gathered from the shards under FSDP) and the digests are compared, which
    works whatever the ranks' shard sizes.
    """

    def on_train_end(self, trainer: L.Trainer, pl_module: StageModule) -> None:
        if trainer.world_size < 2:
            return
        digests = gather_objects(checksum(full_state_dict(pl_module.reasoner)))
        if len(set(digests)) > 1:
            raise RuntimeError(f"reasoner weights differ across ranks (digests {digests})")
        log.info("reasoner weights identical on %d ranks", trainer.world_size)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes a local checkpoint next to its target, syncs it, then renames it over the target.

    Lightning's own save goes through an fsspec transaction whose temporary file lives in
    `$TMPDIR`; when that is another filesystem than the run folder (node-local /tmp, run on a
    shared disk) the final move is a copy that truncates `last.ckpt` first, so a kill during it
    destroys the only checkpoint. A same-folder temporary file makes the rename atomic
    everywhere; remote URLs keep Lightning's path.
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None
    ) -> None:
        if "://" in str(path) or storage_options is not None:
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        target = Path(path)
        tmp: Path | None = None
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
            tmp = Path(name)
            with os.fdopen(fd, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
            tmp = None
        except BaseException as err:
            if tmp is not None:
                tmp.unlink(missing_ok=True)
            if isinstance(err, OSError):  # disk full, quota, folder gone: name the file
                raise CheckpointError(
                    f"could not write checkpoint {target}: {err.strerror or err}; "
                    "the previous one is kept"
                ) from err
            raise
        # The rename is durable once the folder's entry is on disk; some filesystems cannot
        # sync a folder, and the checkpoint is complete either way.
        with contextlib.suppress(OSError):
            dir_fd = os.open(target.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)


def validation_follows(trainer: L.Trainer, pl_module: StageModule) -> bool:
    """Whether Lightning validates after the batch just trained (every `val_check_batch`)."""
    return pl_module.batches_done() % trainer.val_check_batch == 0


class PeriodicCheckpoint(L.Callback):
    """`last.ckpt` every `every_n_steps` optimiser steps, written after that step's validation
    when one follows it.

    Lightning's ModelCheckpoint writes at the end of the training batch, before validation: a
    run killed during that validation resumes past it and never logs it (nor exports a best
    reasoner from it). Written after validation, the checkpoint resumes after both, and
    Lightning restores its loop counters from either point exactly.
    """

    def __init__(self, path: str | Path, every_n_steps: int) -> None:
        self.path = Path(path)
        self.every_n_steps = every_n_steps

    def _save(self, trainer: L.Trainer) -> None:
        # Flush the loggers first: rows logged up to this checkpoint must survive a SIGKILL, or
        # a resumed run's metrics.csv would miss them (the CSV logger buffers 100 steps).
        for logger in trainer.loggers:
            logger.save()
        trainer.save_checkpoint(self.path, weights_only=False)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: StageModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if trainer.global_step % self.every_n_steps == 0 and not validation_follows(
            trainer, pl_module
        ):
            self._save(trainer)

    def on_validation_end(self, trainer: L.Trainer, pl_module: StageModule) -> None:
        if not trainer.sanity_checking and trainer.global_step % self.every_n_steps == 0:
            self._save(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: StageModule) -> None:
        """The finished run's state too: a run stopped during its final table resumes to the
        table without training again."""
        if trainer.global_step % self.every_n_steps != 0:
            self._save(trainer)


class EndWithLogAndValidation(L.Callback):
    """Every run's last step reaches the loggers and is followed by a validation.

    Lightning writes training metrics every `log_every_n_steps` batches and validates every
    `val_check_interval`, so a run whose length is a multiple of neither (a 3-step smoke run,
    300 steps logged every 7) would end with its last steps unlogged and its final weights
    never validated. Raising `trainer.should_stop` on the last batch is Lightning's own way to
    end early: it logs that batch and runs the validation the loop owes an early stop.
    """

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: StageModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if pl_module.batches_done() >= pl_module.total_batches():
            trainer.should_stop = True


class StopOnSignal(L.Callback):
    """SIGTERM or Ctrl+C: finish the batch, write `last.ckpt`, stop; the same command resumes.

    The checkpoint is written where the periodic ones are (end of a training batch), the point
    Lightning resumes from exactly, and the run stops as the next batch starts, once the
    finished batch's metrics are logged. (Stopping through Lightning's own SIGTERM handling,
    after validation, resumes with the logged step numbers shifted by one.) A batch followed by
    validation is not a stopping point, because resuming would skip that validation: the run
    trains one more batch. A second Ctrl+C interrupts at once.
    """

    def __init__(self, checkpoint: str | Path) -> None:
        self.checkpoint = Path(checkpoint)
        self.received: signal.Signals | None = None
        self._previous: dict[signal.Signals, Any] = {}
        self._saved = False

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if signum == signal.SIGINT:  # the next Ctrl+C interrupts at once
            signal.signal(signal.SIGINT, self._previous[signal.SIGINT])
        if self.received is None:
            self.received = signal.Signals(signum)
            log.warning("%s: stopping after this batch", self.received.name)

    def on_train_start(self, trainer: L.Trainer, pl_module: StageModule) -> None:
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM, signal.SIGINT):
                previous = signal.signal(signum, self._on_signal)
                self._previous[signum] = signal.SIG_DFL if previous is None else previous

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: StageModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        # Every rank stops at the same batch, whichever of them got the signal.
        if not trainer.strategy.reduce_boolean_decision(self.received is not None, all=False):
            return
        if validation_follows(trainer, pl_module):
            return
        self.received = self.received or signal.SIGTERM
        trainer.save_checkpoint(self.checkpoint, weights_only=False)
        log.warning("saved %s at step %d", self.checkpoint, trainer.global_step)
        self._saved = True

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: StageModule, batch: Any, batch_idx: int
    ) -> None:
        if self._saved:
            raise SIGTERMException()

    def _restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def on_train_end(self, trainer: L.Trainer, pl_module: StageModule) -> None:
        self._restore()

    def on_exception(
        self, trainer: L.Trainer, pl_module: StageModule, exception: BaseException
    ) -> None:
        self._restore()


class KeepMetricsOnResume(L.Callback):
    """A resumed run's `metrics.csv` holds the whole run, as an uninterrupted run's does.

    Lightning's CSV logger deletes an existing `metrics.csv` when it starts. This reads the rows
    first and, once the checkpoint has said how many batches are done, puts back those logged
    before that point; the batches after it are trained, and logged, again.
    """

    def __init__(self, loggers: list[Logger]) -> None:
        self.previous: dict[int, list[dict[str, str]]] = {}
        for i, logger in enumerate(loggers):
            path = Path(logger.log_dir) / "metrics.csv" if isinstance(logger, CSVLogger) else None
            if path is not None and path.is_file():
                with path.open(newline="") as f:
                    self.previous[i] = list(csv.DictReader(f))

    def on_train_start(self, trainer: L.Trainer, pl_module: StageModule) -> None:
        if not trainer.is_global_zero:
            return
        done = pl_module.batches_done()
        for i, rows in self.previous.items():
            kept = [{k: v for k, v in row.items() if v != ""} for row in rows]
            kept = [row for row in kept if int(row["step"]) < done]
            # The writer has not saved yet: rows put at the front of its buffer come first.
            trainer.loggers[i].experiment.metrics[:0] = kept
        self.previous = {}
