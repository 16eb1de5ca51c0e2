"""`python -m node ...`: start one node (the same options as `pdfleet node`)."""

from __future__ import annotations

import argparse
import sys

from pydantic import ValidationError

from node.options import NodeOptions


def parse_args(argv: list[str]) -> NodeOptions:
    parser = argparse.ArgumentParser(prog="pdfleet node", description="Run one pdfleet node.")
    parser.add_argument("--role", choices=["prefill", "decode", "mixed"], default="mixed")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=30000)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument(
        "--memory-backend", choices=["auto", "torch_memory_saver", "cpu", "none"], default="auto"
    )
    parser.add_argument("--bootstrap-port", type=int, help="prefill only; default 8998")
    parser.add_argument("--model", help="safetensors file with the weights (default: seeded init)")
    parser.add_argument(
        "--model-size", default="tiny", help="tiny, small, or a weights budget like 16g"
    )
    parser.add_argument("--layers", type=int)
    parser.add_argument("--width", type=int)
    parser.add_argument("--heads", type=int)
    parser.add_argument(
        "--dtype", choices=["auto", "float32", "bfloat16", "float16"], default="auto"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--kv-cache-tokens", type=int, default=8192)
    parser.add_argument("--kv-slots", type=int, default=8)
    parser.add_argument("--kv-handoff-timeout-s", type=float, default=30.0)
    parser.add_argument("--kv-ttl-s", type=float, default=60.0)
    parser.add_argument("--drain-timeout-s", type=float, default=30.0)
    parser.add_argument("--enable-fault-injection", action="store_true")
    parser.add_argument("--fault", action="append", default=[], dest="faults", metavar="RULE")
    parser.add_argument("--log-level", default="warning")
    args = vars(parser.parse_args(argv))
    explicit = {name: value for name, value in args.items() if value is not None}
    try:
        return NodeOptions(**explicit)
    except ValidationError as error:
        parser.error(str(error))


def main(argv: list[str] | None = None) -> None:
    options = parse_args(sys.argv[1:] if argv is None else argv)
    from node.server import serve  # torch loads only once the options are known to be good

    serve(options)


if __name__ == "__main__":
    main()
