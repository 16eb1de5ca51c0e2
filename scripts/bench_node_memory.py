"""Node memory benchmark: release/resume time and bandwidth per tag, in-process.

Loads a model through the node's own classes (NodeRuntime: engine, memory backend and
MemoryController), measures the machine's pinned host<->device copy bandwidth in the same run,
then runs N cycles of four steps, one tag each, in the order `--order` names: `staged` (an RL
loop's: release kv_cache, release weights, resume weights, resume kv_cache) or `weights-first`
(release weights, release kv_cache, resume kv_cache, resume weights). Reports per step time
and GB/s (region bytes / time), the freed fraction of the node's device memory above the CUDA
context (measured once the context has loaded the kernels a matrix product needs, and also
above the bare context), and whether tokens after each wake equal those before sleep.

    python scripts/bench_node_memory.py --weights-gib 16 --kv-gib 24 --json out/bench.json
    python scripts/bench_node_memory.py --device cpu --model-size tiny   # smoke check
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any

import torch

from node.engine.sampler import SamplingParams
from node.engine.tokenizer import encode
from node.generation import Bootstrap, GenerationRequest
from node.memory.messages import ReleaseRequest, ResumeRequest
from node.memory.meter import read_memory
from node.memory.tags import MemoryTag
from node.options import NodeOptions, dtype_bytes
from node.runtime import NodeRuntime

GB = 1e9
GIB = 1024**3
W, KV = MemoryTag.WEIGHTS, MemoryTag.KV_CACHE
ORDERS = {
    "staged": [("release", KV), ("release", W), ("resume", W), ("resume", KV)],
    "weights-first": [("release", W), ("release", KV), ("resume", KV), ("resume", W)],
}


@dataclass
class StepResult:
    cycle: int
    op: str
    tag: str
    region_bytes: int
    elapsed_ms: float
    gb_per_s: float
    measured_bytes: int


@dataclass
class CopyBandwidth:
    bytes: int
    host_to_device_gb_s: float
    device_to_host_gb_s: float


def build_options(args: argparse.Namespace) -> NodeOptions:
    model_size = f"{args.weights_gib:g}g" if args.weights_gib else args.model_size
    probe = NodeOptions(device=args.device, model_size=model_size)
    shape = probe.model_shape
    per_token = shape.layers * 2 * shape.width * dtype_bytes(probe.torch_dtype_name)
    kv_tokens = max(int(args.kv_gib * GIB / per_token), 16 * args.kv_slots) if args.kv_gib else 8192
    return NodeOptions(
        device=args.device,
        model_size=model_size,
        kv_cache_tokens=kv_tokens,
        kv_slots=args.kv_slots,
        seed=args.seed,
    )


def pinned_bandwidth(nbytes: int, repeats: int = 5) -> CopyBandwidth:
    """Median GB/s of one big pinned host<->device copy each way, timed with CUDA events."""
    host = torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
    device = torch.empty(nbytes, dtype=torch.uint8, device="cuda")

    def timed(dst: torch.Tensor, src: torch.Tensor) -> float:
        speeds = []
        for _ in range(repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            dst.copy_(src, non_blocking=True)
            end.record()
            end.synchronize()
            speeds.append(nbytes / (start.elapsed_time(end) / 1000) / GB)
        return statistics.median(speeds)

    result = CopyBandwidth(nbytes, timed(device, host), timed(host, device))
    del host, device
    torch.cuda.empty_cache()
    return result


async def sample_tokens(runtime: NodeRuntime, count: int) -> list[int]:
    request = GenerationRequest(
        rid="bench",
        input_ids=encode("memory benchmark"),
        sampling=SamplingParams(max_new_tokens=count, temperature=0.0),
        bootstrap=Bootstrap(host=None, port=None, room=None),
    )
    return (await runtime.local_service.complete(request)).output_ids


def context_baseline(device: str) -> tuple[int, int]:
    """Device memory used by the bare CUDA context, and by the context once a bf16 matrix
    product has loaded its kernels (workspaces freed again): what no release can return."""
    bare = read_memory(device).used_bytes
    if device != "cuda":
        return bare, bare
    a = torch.ones(256, 256, dtype=torch.bfloat16, device="cuda")
    (a @ a).sum().item()
    del a
    torch._C._cuda_clearCublasWorkspaces()
    torch.cuda.empty_cache()
    return bare, read_memory(device).used_bytes


async def run_cycles(
    runtime: NodeRuntime, args: argparse.Namespace, context: tuple[int, int]
) -> dict[str, Any]:
    controller = runtime.controller
    device = runtime.options.device
    reference = await sample_tokens(runtime, args.tokens)
    loaded_used = read_memory(device).used_bytes
    steps: list[StepResult] = []
    freed_fractions: list[float] = []
    freed_fractions_bare: list[float] = []
    tokens_equal: list[bool] = []
    bare_used, context_used = context
    steps_order = ORDERS[args.order]
    for cycle in range(1, args.cycles + 1):
        for index, (op, tag) in enumerate(steps_order):
            if op == "release":
                report = await controller.release(ReleaseRequest(tags=[tag]))
                measured = report.freed_bytes
            else:
                report = await controller.resume(ResumeRequest(tags=[tag]))
                measured = report.restored_bytes
            region = controller.backend.region_bytes(tag)
            steps.append(
                StepResult(
                    cycle=cycle,
                    op=op,
                    tag=tag.value,
                    region_bytes=region,
                    elapsed_ms=report.elapsed_ms,
                    gb_per_s=region / (report.elapsed_ms / 1000) / GB,
                    measured_bytes=measured,
                )
            )
            if index == 1:  # both regions released
                asleep_used = read_memory(device).used_bytes
                freed = loaded_used - asleep_used
                freed_fractions.append(freed / (loaded_used - context_used))
                freed_fractions_bare.append(freed / (loaded_used - bare_used))
        tokens_equal.append(await sample_tokens(runtime, args.tokens) == reference)
    return {
        "steps": [asdict(s) for s in steps],
        "order": args.order,
        "freed_fraction_above_context": freed_fractions,
        "freed_fraction_above_bare_context": freed_fractions_bare,
        "tokens_identical_after_wake": tokens_equal,
        "reference_tokens": reference,
        "used_bytes": {"bare_context": bare_used, "context": context_used, "loaded": loaded_used},
    }


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "| cycle | step | region GiB | time ms | GB/s | measured GiB |",
        "|---|---|---|---|---|---|",
    ]
    for step in result["steps"]:
        lines.append(
            f"| {step['cycle']} | {step['op']} {step['tag']} | {step['region_bytes'] / GIB:.2f} "
            f"| {step['elapsed_ms']:.1f} | {step['gb_per_s']:.1f} "
            f"| {step['measured_bytes'] / GIB:.2f} |"
        )
    fractions = ", ".join(f"{f:.2%}" for f in result["freed_fraction_above_context"])
    bare = ", ".join(f"{f:.2%}" for f in result["freed_fraction_above_bare_context"])
    used = result["used_bytes"]
    lines += [
        "",
        f"- device: {result['device']}, backend: {result['backend']}, model: {result['model']}, "
        f"order: {result['order']}",
        f"- device memory used: bare context {used['bare_context'] / GIB:.2f} GiB, context with "
        f"matmul kernels loaded {used['context'] / GIB:.2f} GiB, loaded node "
        f"{used['loaded'] / GIB:.2f} GiB",
        f"- freed fraction of device memory above the loaded context, per cycle: {fractions}",
        f"- freed fraction above the bare context, per cycle: {bare}",
        f"- tokens identical after each wake: {result['tokens_identical_after_wake']}",
    ]
    if result.get("pinned_copy"):
        copy = result["pinned_copy"]
        lines.append(
            f"- pinned copy bandwidth ({copy['bytes'] / GIB:.1f} GiB, median): "
            f"host->device {copy['host_to_device_gb_s']:.1f} GB/s, "
            f"device->host {copy['device_to_host_gb_s']:.1f} GB/s"
        )
    lines.append(
        f"- load {result['load_s']:.1f} s; "
        f"pinned weights buffer ready after {result['pin_ready_s']:.1f} s"
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--weights-gib", type=float, help="weights budget; overrides --model-size")
    parser.add_argument("--model-size", default="tiny")
    parser.add_argument("--kv-gib", type=float, help="KV pool size (default: 8192 tokens)")
    parser.add_argument("--kv-slots", type=int, default=8)
    parser.add_argument("--cycles", type=int, default=3)
    parser.add_argument("--order", choices=sorted(ORDERS), default="staged")
    parser.add_argument("--tokens", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="write the results here as JSON")
    args = parser.parse_args()

    options = build_options(args)
    context = context_baseline(args.device)
    started = time.perf_counter()
    runtime = NodeRuntime(options)
    load_s = time.perf_counter() - started
    pin_ready_s = 0.0
    pinned_copy = None
    if args.device == "cuda":
        torch.cuda.synchronize()
        backend: Any = runtime.backend
        while not backend.host_buffer_ready():
            time.sleep(0.05)
        pin_ready_s = time.perf_counter() - started
        copy_bytes = min(runtime.backend.region_bytes(MemoryTag.WEIGHTS), 4 * GIB)
        pinned_copy = asdict(pinned_bandwidth(copy_bytes))
    result = asyncio.run(run_cycles(runtime, args, context))
    result.update(
        device=torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
        backend=runtime.backend.name,
        model=str(options.model_shape),
        load_s=load_s,
        pin_ready_s=pin_ready_s,
        pinned_copy=pinned_copy,
        options=options.model_dump(exclude={"admin_token"}),
    )
    print(markdown(result))
    if args.json:
        with open(args.json, "w") as out:
            json.dump(result, out, indent=2)
    if not all(result["tokens_identical_after_wake"]):
        raise SystemExit("tokens changed after a sleep/wake cycle")


if __name__ == "__main__":
    main()
