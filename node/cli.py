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


def _flag(name: str, field: FieldInfo) -> str | None:
    marks = [mark for mark in field.metadata if isinstance(mark, Flag)]
    return marks[0].name if marks else "--" + name.replace("_", "-")


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


def _option(name: str, field: FieldInfo, flag: str) -> click.Option:
    default = field.get_default(call_default_factory=True)
    if field.annotation is bool:
        return click.Option([flag, name], is_flag=True, default=default, help=field.description)
    if get_origin(field.annotation) is list:
        return click.Option([flag, name], multiple=True, metavar="RULE", help=field.description)
    return click.Option(
        [flag, name], type=_click_type(field.annotation),
        default=default.value if isinstance(default, Enum) else default,
        show_default=default is not None, help=field.description)


def _flags() -> dict[str, str]:
    """Each command-line field's flag, by field name."""
    flags = {name: _flag(name, field) for name, field in NodeOptions.model_fields.items()}
    return {name: flag for name, flag in flags.items() if flag is not None}


def _describe(error: ValidationError, flags: dict[str, str]) -> str:
    lines = []
    for problem in error.errors():
        message = problem["msg"].removeprefix("Value error, ")
        where = problem["loc"][0] if problem["loc"] else None
        lines.append(f"{flags.get(str(where), where)}: {message}" if where else message)
    return "\n".join(lines)


def node_options(context: click.Context) -> NodeOptions:
    """The options given on the command line; a usage error (exit 2) names the bad flag."""
    given = {name: value for name, value in context.params.items()
             if context.get_parameter_source(name) is not ParameterSource.DEFAULT}
    try:
        return NodeOptions(**given)
    except ValidationError as error:
        raise click.UsageError(_describe(error, _flags()), context) from None


def _run(**_: Any) -> None:
    options = node_options(click.get_current_context())
    from node.server import serve  # torch loads only once the options are known to be good

    serve(options)


def _env_only() -> str:
    fields = NodeOptions.model_fields
    return "\n\n".join(f"{name}: {fields[name].description}."
                       for name in fields if name not in _flags())


command = click.Command(
    "node",
    callback=_run,
    params=[_option(name, NodeOptions.model_fields[name], flag)
            for name, flag in _flags().items()],
    help="Run one pdfleet node serving the reference model.",
    epilog="Not on the command line: " + _env_only(),
)


def main(argv: list[str] | None = None) -> None:
    command.main(argv, prog_name=PROG_NAME)
