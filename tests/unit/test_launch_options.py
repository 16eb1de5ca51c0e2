"""`pdfleet up` turns a node's `launch:` mapping into the flags `pdfleet node` reads."""

from __future__ import annotations

from node.cli import command, node_options
from node.faults.rules import parse_rule
from pdfleet.launcher import node_command
from router.config import NodeSpec

RULES = ["route=/flush_cache,kind=status,code=500", "route=*,kind=delay,seconds=1"]


def test_launch_faults_become_repeated_fault_flags_the_node_accepts() -> None:
    spec = NodeSpec(url="http://127.0.0.1:30001", role="decode", launch={
        "faults": RULES, "device": "cpu", "enable_fault_injection": True})
    args = node_command(spec)
    assert args.count("--fault") == 2 and "--faults" not in args
    flags = args[args.index("node") + 1:]
    with command.make_context("node", flags) as context:
        options = node_options(context)
    assert options.faults == [parse_rule(rule) for rule in RULES]
    assert options.enable_fault_injection and options.port == 30001
