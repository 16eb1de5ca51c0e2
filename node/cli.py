"""The node's command line (`pdfleet node`, `python -m node`), built from `NodeOptions`.

Each field is one option: `--` and its name in kebab-case (or its `Flag`), its type, its
default, choices for a Literal or an enum, repeatable for a list, and its description as the
help. A field added to `NodeOptions` is an option here without further change.
"""

from __future__ import annotations

import types
from enum import Enum
from typing import Any, Literal, Union, get_args, get_origin

import click
from click.core import ParameterSource
from pydantic import ValidationError
from pydantic.fields import FieldInfo

from node.options import Flag, NodeOptions

PROG_NAME = "pdfleet node"


def _flag(name: str, field: FieldInfo) -> Flag:
    marks = [mark for mark in field.metadata if isinstance(mark, Flag)]
    return marks[0] if marks else Flag("--" + name.replace("_", "-"))


# Each command-line field's flag, by field name.
FLAGS: dict[str, Flag] = {
    name: flag for name, field in NodeOptions.model_fields.items()
    if (flag := _flag(name, field)).name is not None
}


def _click_type(annotation: Any) -> Any:
    """The click type of a field's annotation, `X | None` read as X."""
    if get_origin(annotation) in (Union, types.UnionType):
        (annotation,) = [arg for arg in get_args(annotation) if arg is not type(None)]
    if get_origin(annotation) is Literal:
        return click.Choice([str(arg) for arg in get_args(annotation)])
    if isinstance(annotation, type) and issubclass(annotation, Enum):
        return click.Choice([member.value for member in annotation])
    if annotation in (int, float):
        return annotation
    return click.STRING


def _option(name: str, flag: Flag) -> click.Option:
    field = NodeOptions.model_fields[name]
    declared = [flag.name, name]
    default = field.get_default(call_default_factory=True)
    if field.annotation is bool:
        return click.Option(declared, is_flag=True, default=default, help=field.description)
    if get_origin(field.annotation) is list:
        return click.Option(declared, multiple=True, metavar=flag.metavar,
                            help=field.description)
    return click.Option(
        declared, type=_click_type(field.annotation), metavar=flag.metavar,
        default=default.value if isinstance(default, Enum) else default,
        show_default=default is not None, help=field.description)


def _describe(error: ValidationError) -> str:
    """pydantic's errors, each under the flag it is about."""
    lines = []
    for problem in error.errors():
        message = problem["msg"].removeprefix("Value error, ")
        field = str(problem["loc"][0]) if problem["loc"] else None
        flag = FLAGS[field].name if field in FLAGS else field
        lines.append(f"{flag}: {message}" if flag else message)
    return "\n".join(lines)


def node_options(context: click.Context) -> NodeOptions:
    """The options given on the command line; a usage error (exit 2) names the bad flag."""
    given = {name: value for name, value in context.params.items()
             if context.get_parameter_source(name) is not ParameterSource.DEFAULT}
    try:
        return NodeOptions(**given)
    except ValidationError as error:
        raise click.UsageError(_describe(error), context) from None


def _run(**_: Any) -> None:
    options = node_options(click.get_current_context())
    # torch loads only once the options are known to be good
    if options.save_weights is not None:
        from node.runtime import save_weights

        written = save_weights(options, options.save_weights)
        click.echo(f"wrote {written} bytes of weights to {options.save_weights}")
        return
    from node.server import serve

    serve(options)


command = click.Command(
    "node",
    callback=_run,
    params=[_option(name, flag) for name, flag in FLAGS.items()],
    help="Run one pdfleet node serving the reference model.",
    epilog="Not on the command line: " + "\n\n".join(
        f"{name}: {field.description}." for name, field in NodeOptions.model_fields.items()
        if name not in FLAGS),
)


def main(argv: list[str] | None = None) -> None:
    command.main(argv, prog_name=PROG_NAME)
