"""A stand-in trainer for the weight-broadcast tests: rank 0 of a weights update group.

It builds the weights a node started with `--seed SEED` serves, joins the group (blocking
until every node has joined too), broadcasts every tensor in the model's layout order, prints
`SENT <bytes>` and exits 0. Every step is bounded by `--timeout-s`: if a node never comes,
the script exits non-zero instead of hanging.

    python tests/node/refit_trainer.py --port P --world-size 3 --seed 7
"""

from __future__ import annotations

import argparse
import sys

import torch

from node.engine.model import TransformerWeights
from node.options import NodeOptions
from node.refit.group import join_group
from node.runtime import model_config


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--address", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--world-size", type=int, required=True)
    parser.add_argument("--group-name", default="weight_update_group")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--timeout-s", type=float, default=30)
    args = parser.parse_args()
    config = model_config(NodeOptions(seed=args.seed))
    weights = TransformerWeights(config, torch.empty(config.numel(), dtype=config.dtype))
    weights.init_seeded(args.seed)
    group = join_group(args.address, args.port, 0, args.world_size, args.group_name, "gloo",
                       args.timeout_s)
    print("JOINED", flush=True)
    sent = 0
    for name, _ in config.layout():
        group.broadcast(weights.params[name])
        sent += weights.params[name].numel() * weights.params[name].element_size()
    group.close()
    print(f"SENT {sent}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
