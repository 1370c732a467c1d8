"""FSDP2 must save memory on the frozen base, not just shard it at rest.

Two gloo processes shard the tiny base (4 layers here, so that the decoder, which is what gets
sharded, outweighs the embedding that stays whole) with the training stages' own
`shard_stage`, take an SFT forward (encode, reason, answer log-probs, as a training step does)
and count the bytes of the base's parameters each rank holds at the end of it, before
backward: the sharded storage of every parameter plus any unsharded copy FSDP2 still holds.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import SUBPROCESS_TIMEOUT_S, latent_lm
from omegaconf import OmegaConf
from torch import nn
from torch.distributed.tensor import DTensor

from lrt.backbone import backbone_config, load_backbone
from lrt.lm.latent_lm import LatentLM

ROOT = Path(__file__).resolve().parents[1]
LAYERS = 4


def materialised_bytes(module: nn.Module) -> int:
    """Bytes of the distinct live storages behind `module`'s parameters: what is registered on
    the modules (a DTensor's local shard, or a plain tensor) and, for FSDP2 modules, each
    parameter's shard and all-gathered buffers (freed ones have no bytes)."""
    from torch.distributed.fsdp import FSDPModule

    tensors = list(module.parameters())
    for sub in module.modules():
        if isinstance(sub, FSDPModule):
            for group in sub._get_fsdp_state()._fsdp_param_groups:
                for param in group.fsdp_params:
                    tensors += [param.sharded_param, *param.all_gather_outputs]
    storages = {}
    for tensor in tensors:
        local = tensor.to_local() if isinstance(tensor, DTensor) else tensor
        storage = local.untyped_storage()
        if storage.nbytes():
            storages[storage.data_ptr()] = storage.nbytes()
    return sum(storages.values())


def tiny_lm() -> LatentLM:
    """The tiny random base with `LAYERS` layers and a small reasoner, the same on every rank."""
    raw = OmegaConf.load(ROOT / "conf" / "model" / "tiny_random.yaml")
    raw.random_config.num_hidden_layers = LAYERS
    return latent_lm(load_backbone(backbone_config(raw)))


def rank_main(rank: int, port: int) -> None:
    """One of 2 gloo ranks: shard, take an SFT forward, print the base's bytes on this rank."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    from lrt.training.base import shard_stage

    os.environ |= {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    dist.init_process_group("gloo", rank=rank, world_size=2)
    torch.set_num_threads(1)
    lm = tiny_lm()
    shard_stage(lm, init_device_mesh("cpu", (2,), mesh_dim_names=("data_parallel",)))
    ids, mask = lm.tokenize_prompts(["What is 2 + 3?", "What is 4 * 5?"])
    answer_ids, answer_mask = lm.tokenize_answers(["5", "20"])
    loss = lm.sft_loss(ids, mask, answer_ids, answer_mask)
    assert loss.requires_grad  # a training forward, with backward still to come
    print(json.dumps({"rank": rank, "bytes": materialised_bytes(lm.base)}), flush=True)
    dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_two_ranks_hold_at_most_sixty_percent_of_the_base_after_forward(tmp_path: Path) -> None:
    """Each of 2 ranks holds at most 0.6 of the base's parameter bytes after a training
    forward (the embedding/LM head, which stay whole, keep it above 0.5).

    Measured on the tiny base: 1 rank 659,456 bytes; per rank on 2 before the fix 1.45x that
    (each decoder layer was its own FSDP root, and FSDP2 keeps a root's parameters gathered
    after forward, on top of its shard), after it 0.55x.
    """
    whole = materialised_bytes(tiny_lm().base)
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": f"{ROOT}:{ROOT / 'tests'}"}
    ranks, logs = [], []
    for rank in range(2):  # output to files: a full pipe could stall a rank inside a collective
        logs += [open(tmp_path / f"{rank}.{kind}", "w") for kind in ("out", "err")]
        code = f"from test_fsdp_memory import rank_main; rank_main({rank}, {port})"
        cmd = [sys.executable, "-c", code]
        ranks.append(subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=logs[-2], stderr=logs[-1]))
    try:
        for proc in ranks:
            proc.wait(timeout=SUBPROCESS_TIMEOUT_S)
    finally:
        for proc in ranks:
            proc.kill()
        for log in logs:
            log.close()
    ratios = []
    for rank, proc in enumerate(ranks):
        assert proc.returncode == 0, (tmp_path / f"{rank}.err").read_text()[-3000:]
        line = (tmp_path / f"{rank}.out").read_text().strip().splitlines()[-1]
        ratios.append(json.loads(line)["bytes"] / whole)
    assert all(r <= 0.6 for r in ratios), f"{whole} bytes on 1 rank; per rank on 2: {ratios}"
