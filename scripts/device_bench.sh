#!/usr/bin/env bash
# The router benchmarks in one command, for a many-core machine with no network (the GPU
# machines: 16 CPU cores, Python 3.12). Installs the wheels in WHEELS (pdfleet's runtime
# dependencies missing there, sglang-router, vllm-router) into a private folder, then runs
# bench_proxy (every router pinned to one core) and bench_fanout (8 to 2048 nodes), and
# writes their tables and JSON to OUT.
#
#   WHEELS=path/to/wheels OUT=out scripts/device_bench.sh [--duration 5]
#
# Fetch the wheels where pip works (Python 3.12, x86-64, manylinux): pip download --no-deps
# sglang-router vllm-router setproctitle fastapi starlette uvicorn httptools orjson pydantic
# pydantic-core annotated-types annotated-doc typing-inspection opentelemetry-api tenacity.
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS=${WHEELS:-.whl}
OUT=${OUT:-bench-out}
mkdir -p "$OUT"
site=$(mktemp -d)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" \
    "$WHEELS"/*.whl
export PYTHONPATH="$site:$PWD" PYTHONUNBUFFERED=1
python3 - <<'PY'
import importlib.metadata as m
for name in ("sglang-router", "vllm-router", "fastapi", "uvicorn", "httptools", "uvloop"):
    print(name, m.version(name))
PY
python3 scripts/bench_proxy.py --json "$OUT/proxy.json" "$@" | tee "$OUT/proxy.md"
python3 scripts/bench_fanout.py --nodes 8 64 512 2048 --runs 10 --json "$OUT/fanout.json" \
    | tee "$OUT/fanout.md"
