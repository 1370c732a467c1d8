"""Shared helpers for the benchmark scripts: model set-up, timing, peak memory, JSON output."""

from __future__ import annotations

import argparse
import json
import platform
import resource
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from lrt.backbone import Backbone, backbone_config, load_backbone
from lrt.lm.latent_lm import LatentLM
from lrt.reasoner import build_reasoner

ROOT = Path(__file__).resolve().parents[1]

# bf16 dense peak of the GPUs we are lent (TFLOP/s), for model FLOPs utilisation.
BF16_PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--model", default="smollm2_135m", help="a conf/model/<name>.yaml")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--repeats", type=int, default=3, help="timed repetitions (after a warm-up)")
    p.add_argument("--out", default=None, help="JSON output path (default: bench/<script>.json)")
    return p


def load(model: str, device: str, **settings: Any) -> Backbone:
    """The conf/model/<model>.yaml base on `device`, with `settings` overriding its keys; on
    CPU in float32 unless `dtype` is one of them (bf16 matmuls are slow or missing on many
    CPUs, though not on this one: AVX-512 BF16)."""
    cfg = backbone_config(OmegaConf.load(ROOT / "conf" / "model" / f"{model}.yaml"))
    if device == "cpu" and "dtype" not in settings:
        settings["dtype"] = "float32"
    cfg = replace(cfg, **settings)
    backbone = load_backbone(cfg)
    backbone.model.to(device)
    return backbone


def latent_lm(
    backbone: Backbone, k: int, width: int = 256, depth: int = 2, seed: int = 0
) -> LatentLM:
    """A freshly initialised reasoner of K latents, seeded so that every run of a benchmark
    decodes the same answers (an untrained reasoner's answer lengths drive its latency)."""
    torch.manual_seed(seed)
    reasoner = build_reasoner(
        {"num_latents": k, "width": width, "depth": depth, "heads": 4},
        backbone.name,
        backbone.hidden_size,
        backbone.embedding_rms(),
    )
    return LatentLM(backbone, reasoner.to(backbone.device))


def random_ids(backbone: Backbone, batch: int, length: int, seed: int = 0) -> torch.Tensor:
    """Token ids drawn from the ordinary vocabulary (no special tokens)."""
    g = torch.Generator().manual_seed(seed)
    high = min(backbone.tokenizer.vocab_size, backbone.model.config.vocab_size)
    return torch.randint(3, high, (batch, length), generator=g).to(backbone.device)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn: Callable[[], Any], device: str, repeats: int) -> tuple[float, Any]:
    """Median wall time of `fn` over `repeats` runs after one warm-up; returns (s, last result)."""
    result = fn()
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        result = fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2], result


def reset_peak(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()


def peak_memory_mb(device: str) -> float:
    """Peak GPU memory since the last reset, or the process' peak RSS on CPU (monotonic)."""
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


CPU_PEAK_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536"}
"""Environment for a process whose CPU peak is measured: glibc returns freed blocks of 64 KiB
and more to the system at once, so resident memory counts what is alive, not what its heap
kept (without it a step's peak read about half of what it held)."""


def rss_status() -> tuple[float, float]:
    """(resident, peak resident) bytes of this process, from /proc/self/status."""
    values = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0]) * 1024
    return values["VmRSS"], values["VmHWM"]


def start_cpu_peak() -> float:
    """Reset the kernel's peak-RSS mark (write 5 to /proc/self/clear_refs); the RSS now."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return rss_status()[0]


def gpu_peak_tflops() -> float | None:
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    return next((v for k, v in BF16_PEAK_TFLOPS.items() if k in name), None)


def environment(device: str) -> dict[str, Any]:
    return {
        "device": torch.cuda.get_device_name()
        if device.startswith("cuda")
        else platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }


def write_json(path: str | None, default_name: str, payload: dict[str, Any]) -> Path:
    out = Path(path) if path else ROOT / "bench" / default_name
    out.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {out}")
    return out


def ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")
