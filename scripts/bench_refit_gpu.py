"""Refit benchmark: how fast a node takes new weights, against what the machine can move.

From disk (default): writes a model file of the node's shape (`--size 8g` in bf16 is ~8 GiB),
reads it once so it sits in the page cache, measures how fast this machine reads that file
into host memory (parallel `pread` into pinned memory, and torch copying from an mmap of it),
then times `update_weights_from_disk` on a node built in this process with the node's own
classes (NodeRuntime, MemoryController, torch_memory_saver on CUDA) over `--repeats` runs.
Reports GB/s of each run's copy and the ratio to the file read rate.

`--distributed` (CUDA: 2 GPUs; CPU: gloo): this process is the trainer (rank 0, GPU 0). It
first broadcasts the same tensors to a bare receiver process on GPU 1 (plain
`torch.distributed` broadcast into preallocated tensors), then to a real node on GPU 1 through
`init_weights_update_group` and `update_weights_from_distributed` over HTTP; GB/s of both
and the ratio.

    python scripts/bench_refit_gpu.py --size 8g --json out/refit_disk.json
    python scripts/bench_refit_gpu.py --size 8g --distributed --json out/refit_dist.json
    python scripts/bench_refit_gpu.py --device cpu --size tiny            # smoke check
    python scripts/bench_refit_gpu.py --device cpu --size tiny --distributed
"""

from __future__ import annotations

import argparse
import asyncio
import json
import mmap
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import torch

from node.engine.model import ModelConfig, TransformerWeights
from node.memory.backends.torch_memory_saver import TorchMemorySaverBackend
from node.options import NodeOptions
from node.refit.group import WeightsGroup, join_group
from node.refit.messages import WeightUpdate
from node.refit.transfer import CHUNK_BYTES, WeightsCopier
from node.runtime import NodeRuntime, model_config, save_weights
from pdfleet.ports import free_port
from pdfleet.vocabulary import Operation

GB = 1e9
GROUP = "bench_refit"
JOIN_TIMEOUT_S = 120.0


def node_options(args: argparse.Namespace, **extra: Any) -> NodeOptions:
    return NodeOptions(device=args.device, model_size=args.size, dtype=args.dtype,
                       kv_cache_tokens=256, kv_slots=2, **extra)


def summary(speeds: list[float]) -> dict[str, float]:
    return {"median_gb_s": round(statistics.median(speeds), 3),
            "best_gb_s": round(max(speeds), 3)}


# --- from disk ---------------------------------------------------------------------------

def read_rates(path: Path, repeats: int) -> dict[str, Any]:
    """How fast this machine reads the (cached) file into host memory, two ways."""
    size = path.stat().st_size
    copier = WeightsCopier()
    staging = torch.empty(min(CHUNK_BYTES, size), dtype=torch.uint8,
                          pin_memory=torch.cuda.is_available())
    view = memoryview(staging.numpy())
    pread_speeds, mmap_speeds = [], []
    fd = os.open(path, os.O_RDONLY)
    try:
        for _ in range(repeats):
            started = time.perf_counter()
            for offset in range(0, size, len(view)):
                copier.read(fd, offset, view[:min(len(view), size - offset)])
            pread_speeds.append(size / (time.perf_counter() - started) / GB)
        with mmap.mmap(fd, size, access=mmap.ACCESS_COPY) as mapped:
            source = torch.frombuffer(mapped, dtype=torch.uint8)
            for _ in range(repeats):
                started = time.perf_counter()
                for offset in range(0, size, staging.numel()):
                    count = min(staging.numel(), size - offset)
                    staging[:count].copy_(source[offset:offset + count])
                mmap_speeds.append(size / (time.perf_counter() - started) / GB)
            del source
    finally:
        os.close(fd)
    pread, torch_mmap = summary(pread_speeds), summary(mmap_speeds)
    return {"bytes": size, "parallel_pread": pread, "torch_from_mmap": torch_mmap,
            "file_read_gb_s": max(pread["median_gb_s"], torch_mmap["median_gb_s"])}


async def update_runs(runtime: NodeRuntime, path: Path, count: int) -> list[dict[str, Any]]:
    runs = []
    for index in range(count):
        with runtime.weights_from_disk(str(path), None) as source:
            report = await runtime.controller.update_weights(
                Operation.UPDATE_FROM_DISK, WeightUpdate(weight_version=f"run-{index}"), source)
        runs.append({"elapsed_ms": report.elapsed_ms, "copy_ms": report.copy_ms,
                     "copy_gb_s": report.copy_gbps, "bytes": report.bytes})
    return runs


def bench_disk(args: argparse.Namespace) -> dict[str, Any]:
    path = Path(args.file or Path(tempfile.gettempdir()) /
                f"pdfleet-refit-{args.size}-{args.dtype}.safetensors")
    if args.remake or not path.exists():
        save_weights(node_options(args, seed=7), str(path))
    read = read_rates(path, args.repeats)
    runtime = NodeRuntime(node_options(args))
    saver = runtime.backend
    if isinstance(saver, TorchMemorySaverBackend):
        # Its weights' pinned backup buffer is allocated in the background after load: the
        # update runs are timed once that no longer competes for the host's memory bus.
        deadline = time.monotonic() + 600
        while not saver.host_buffer_ready() and time.monotonic() < deadline:
            time.sleep(0.1)
    runs = asyncio.run(update_runs(runtime, path, args.repeats + 1))
    # The first run also allocates the pinned staging buffers: reported, not counted.
    steady = [run["copy_gb_s"] for run in runs[1:]]
    seeded = TransformerWeights(runtime.weights.config, torch.empty_like(runtime.weights.flat))
    seeded.init_seeded(7)
    update = summary(steady)
    return {
        "mode": "disk", "device": args.device, "size": args.size, "dtype": args.dtype,
        "backend": runtime.backend.name, "file": str(path), "read": read,
        "first_run": runs[0], "runs": runs[1:], "update": update,
        "ratio_to_file_read": round(update["median_gb_s"] / read["file_read_gb_s"], 3),
        "weights_equal_seed7": bool(torch.equal(runtime.weights.flat, seeded.flat)),
    }


# --- distributed -------------------------------------------------------------------------

def trainer_weights(config: ModelConfig) -> TransformerWeights:
    flat = torch.empty(config.numel(), dtype=config.dtype, device=config.device)
    weights = TransformerWeights(config, flat)
    weights.init_seeded(7)
    return weights


def broadcast_all(group: WeightsGroup, weights: TransformerWeights) -> float:
    """Seconds to send every tensor in layout order, until the last has left."""
    started = time.perf_counter()
    for name, _ in weights.config.layout():
        group.broadcast(weights.params[name])
    if weights.flat.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - started


def receiver(args: argparse.Namespace) -> None:
    """The bare baseline's rank 1: plain broadcasts into preallocated tensors."""
    config = model_config(node_options(args))
    weights = TransformerWeights(config, torch.empty(config.numel(), dtype=config.dtype,
                                                     device=config.device))
    group = join_group("127.0.0.1", args.master_port, 1, 2, GROUP, backend(args), JOIN_TIMEOUT_S)
    for _ in range(args.repeats):
        broadcast_all(group, weights)
    group.close()


def backend(args: argparse.Namespace) -> str:
    return "nccl" if args.device == "cuda" else "gloo"


def second_gpu() -> dict[str, str]:
    return {**os.environ, "CUDA_VISIBLE_DEVICES": "1"} if torch.cuda.is_available() else {
        **os.environ}


def post(url: str, body: dict[str, Any], timeout_s: float) -> dict[str, Any]:
    request = urllib.request.Request(url, json.dumps(body).encode(),
                                     {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout_s) as reply:
        return json.loads(reply.read())


def in_thread(call: Any, *args: Any) -> tuple[threading.Thread, dict[str, Any]]:
    result: dict[str, Any] = {}

    def run() -> None:
        try:
            result["reply"] = call(*args)
        except Exception as error:  # reported in the JSON, not lost in the thread
            result["error"] = f"{type(error).__name__}: {error}"

    thread = threading.Thread(target=run)
    thread.start()
    return thread, result


def wait_healthy(url: str, process: subprocess.Popen[bytes], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the node exited with {process.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2):
                return
        except OSError:
            time.sleep(0.2)  # polling a starting process
    raise TimeoutError(f"{url} not healthy within {timeout_s}s")


def bench_distributed(args: argparse.Namespace) -> dict[str, Any]:
    if args.device == "cuda" and torch.cuda.device_count() < 2:
        raise SystemExit("--distributed on CUDA needs 2 GPUs (trainer on 0, node on 1)")
    config = model_config(node_options(args))
    weights = trainer_weights(config)
    nbytes = weights.flat.numel() * weights.flat.element_size()

    port = free_port()
    bare = subprocess.Popen([sys.executable, __file__, "--receiver", "--master-port", str(port),
                             *args.passthrough], env=second_gpu())
    group = join_group("127.0.0.1", port, 0, 2, GROUP, backend(args), JOIN_TIMEOUT_S)
    bare_speeds = [nbytes / broadcast_all(group, weights) / GB for _ in range(args.repeats)]
    group.close()
    bare.wait(JOIN_TIMEOUT_S)

    node_port, group_port = free_port(), free_port()
    node = subprocess.Popen(
        [sys.executable, "-m", "node", "--port", str(node_port), "--device", args.device,
         "--model-size", args.size, "--dtype", args.dtype, "--kv-cache-tokens", "256",
         "--kv-slots", "2"], env=second_gpu())
    url = f"http://127.0.0.1:{node_port}"
    try:
        wait_healthy(url, node, 600)
        joining, joined = in_thread(post, f"{url}/init_weights_update_group", {
            "master_address": "127.0.0.1", "master_port": group_port, "rank_offset": 1,
            "world_size": 2, "group_name": GROUP, "backend": backend(args),
            "timeout_s": JOIN_TIMEOUT_S}, JOIN_TIMEOUT_S + 30)
        group = join_group("127.0.0.1", group_port, 0, 2, GROUP, backend(args), JOIN_TIMEOUT_S)
        joining.join()
        layout = config.layout()
        body = {"names": [name for name, _ in layout],
                "dtypes": [args.dtype] * len(layout),
                "shapes": [list(shape) for _, shape in layout], "group_name": GROUP}
        runs = []
        for index in range(args.repeats):
            updating, updated = in_thread(
                post, f"{url}/update_weights_from_distributed",
                {**body, "weight_version": f"run-{index}"}, JOIN_TIMEOUT_S)
            sent_s = broadcast_all(group, weights)
            updating.join()
            runs.append({"trainer_gb_s": round(nbytes / sent_s / GB, 3), **updated})
        group.close()
        post(f"{url}/destroy_weights_update_group", {"group_name": GROUP}, JOIN_TIMEOUT_S)
    finally:
        node.terminate()
        node.wait(30)
    node_speeds = [run["trainer_gb_s"] for run in runs]
    bare_summary, node_summary = summary(bare_speeds), summary(node_speeds)
    return {
        "mode": "distributed", "device": args.device, "size": args.size, "dtype": args.dtype,
        "backend": backend(args), "bytes": nbytes, "join": joined, "bare_broadcast": bare_summary,
        "node_update": node_summary, "runs": runs,
        "ratio_to_bare_broadcast": round(
            node_summary["median_gb_s"] / bare_summary["median_gb_s"], 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--size", default="8g", help="node model size: a preset or a budget")
    parser.add_argument("--dtype", default=None, help="default: bfloat16 on CUDA, else float32")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--file", help="the model file (default: in the temp folder)")
    parser.add_argument("--remake", action="store_true", help="write the model file again")
    parser.add_argument("--distributed", action="store_true")
    parser.add_argument("--json", help="write the results here as JSON")
    parser.add_argument("--receiver", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--master-port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.dtype = args.dtype or ("bfloat16" if args.device == "cuda" else "float32")
    args.passthrough = ["--device", args.device, "--size", args.size, "--dtype", args.dtype,
                        "--repeats", str(args.repeats)]
    if args.receiver:
        receiver(args)
        return
    result = bench_distributed(args) if args.distributed else bench_disk(args)
    text = json.dumps(result, indent=2)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
