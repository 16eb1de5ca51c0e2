"""`pdfleet node`'s options are NodeOptions' fields: each one a flag with its help, parsed
into the same options the model builds."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from node.cli import PROG_NAME, command, node_options
from node.faults.rules import parse_rule
from node.options import NodeOptions
from pdfleet.vocabulary import Role

OFF_THE_COMMAND_LINE = {"admin_token"}


def parsed(*args: str) -> NodeOptions:
    return node_options(command.make_context(PROG_NAME, list(args)))


def test_help_lists_every_option_with_its_description():
    output = CliRunner().invoke(command, ["--help"], terminal_width=1000).output
    help_text = " ".join(output.split())  # descriptions wrap at any width
    for name, field in NodeOptions.model_fields.items():
        flag = "--fault" if name == "faults" else "--" + name.replace("_", "-")
        if name in OFF_THE_COMMAND_LINE:
            assert flag not in help_text
        else:
            assert flag in help_text, name
        assert field.description and field.description in help_text, name


def test_no_flags_give_the_model_defaults():
    assert parsed() == NodeOptions()


def test_flags_reach_the_fields_they_name():
    options = parsed("--role", "prefill", "--port", "7000", "--bootstrap-port", "7001",
                     "--memory-backend", "none", "--kv-ttl-s", "2.5", "--enable-fault-injection",
                     "--fault", "kind=hang", "--fault", "route=/x,kind=crash,code=3")
    assert options == NodeOptions(
        role=Role.PREFILL, port=7000, bootstrap_port=7001, memory_backend="none", kv_ttl_s=2.5,
        enable_fault_injection=True,
        faults=[parse_rule("kind=hang"), parse_rule("route=/x,kind=crash,code=3")])


@pytest.mark.parametrize(("args", "message"), [
    (["--enable-fault-injection", "--fault", "kind=delay,sekonds=1"],
     "--fault: fault rule key 'sekonds'"),
    (["--fault", "kind=hang"], "fault rules need enable_fault_injection"),
    (["--port", "70000"], "--port: "),
    (["--device", "tpu"], "'tpu' is not one of 'cpu', 'cuda'"),
    (["--no-such-option", "1"], "No such option '--no-such-option'"),
])
def test_a_bad_option_exits_2_naming_it(args: list[str], message: str):
    result = CliRunner().invoke(command, args)
    assert result.exit_code == 2
    assert message in result.output and "Traceback" not in result.output
