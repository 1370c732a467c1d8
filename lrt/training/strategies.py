"""FSDP for a frozen base and a small trainable reasoner: PyTorch's FSDP2 through Lightning.

Lightning's `FSDPStrategy` wraps the model in FSDP1, which refuses CPU processes (Lightning:
"The strategy `fsdp` requires a GPU accelerator"; PyTorch: "FSDP needs a non-CPU accelerator
device"). FSDP2 (`fully_shard`), which Lightning runs through `ModelParallelStrategy`, shards
on CPU with gloo as on GPUs with NCCL, mixes frozen and trainable parameters in one unit, and
is what PyTorch now recommends; the stage modules' `configure_model` applies it.
"""

from __future__ import annotations

from lightning.pytorch.strategies import ModelParallelStrategy


class ShardedDataParallel(ModelParallelStrategy):
    """`trainer=fsdp`: pure data parallelism over every process, parameters sharded (FSDP2).

    Every process is a data-parallel rank (no tensor parallelism), and checkpoints hold the
    full state in one file, like every other strategy's, so resuming and `evaluate.py` need
    no conversion.
    """

    def __init__(self) -> None:
        super().__init__(save_distributed_checkpoint=False)

    def setup_environment(self) -> None:
        self._data_parallel_size = self.num_nodes * self.num_processes
        self._tensor_parallel_size = 1
        super().setup_environment()
