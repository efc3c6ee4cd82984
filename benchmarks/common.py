"""Shared benchmark helpers: timing and the environment record every result carries."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results"


def environment(device: torch.device) -> dict:
    env = {
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
    }
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    return env


def interleaved(fns: dict[str, Callable[[], object]], repeats: dict[str, int], device) -> dict:
    """Time several functions round-robin (one warm-up each), so that drift in machine load hits
    all of them alike. Returns per name: median_s, min_s, repeats."""

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for fn in fns.values():
        fn()
    sync()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for round_ in range(max(repeats.values())):
        for name, fn in fns.items():
            if round_ >= repeats[name]:
                continue
            tick = time.perf_counter()
            fn()
            sync()
            times[name].append(time.perf_counter() - tick)
    return {
        name: {"median_s": statistics.median(ts), "min_s": min(ts), "repeats": len(ts)}
        for name, ts in times.items()
    }


def write(name: str, payload: dict) -> Path:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path
