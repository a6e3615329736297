"""Environment variables in fleet files: ``${NAME}``, ``${NAME:-default}``, ``${NAME-default}``.

A fleet file is shared by every device, so values that differ per host (a cloud endpoint, a models
directory) and secrets (a bearer token) are written as references and filled in from the environment of
the process that loads the file:

- ``${NAME}``: the variable's value; a variable that is not set is an error;
- ``${NAME:-default}``: the default when the variable is unset **or empty**;
- ``${NAME-default}``: the default only when the variable is unset;
- ``$$``: a literal ``$`` (so ``$${NAME}`` stays the text ``${NAME}``).

A ``$`` followed by anything else is kept as it is. References are replaced in string values only,
never in keys. This module is pure: it takes the environment as a mapping and reports problems with
their character offset, so the loader can turn them into line/column positions.

Environment variables are text, and a reference must be quoted inside a flow mapping
(``{port: "${PORT}"}``), so a filled-in value is kept as ``EnvText``: the settings models then read
it as the type the key wants (``typed_text``), with YAML's rules: ``9100`` for a port, ``true`` for
a flag, an empty text for an optional setting means "not set", and a token stays text.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import yaml
from yaml.nodes import ScalarNode

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True)
class InterpolationProblem:
    """A reference that could not be filled in, at character ``offset`` of the original text."""

    offset: int
    message: str


def interpolate(text: str, env: Mapping[str, str]) -> tuple[str, list[InterpolationProblem]]:
    """Replace every reference in ``text`` from ``env``; returns the new text and the problems found.

    A reference with a problem is left in the text as written, so the caller can still see it.
    """
    if "$" not in text:
        return text, []
    out: list[str] = []
    problems: list[InterpolationProblem] = []
    i = 0
    while i < len(text):
        char = text[i]
        if char != "$" or i + 1 >= len(text):
            out.append(char)
            i += 1
            continue
        following = text[i + 1]
        if following == "$":
            out.append("$")
            i += 2
            continue
        if following != "{":
            out.append(char)
            i += 1
            continue
        end = text.find("}", i + 2)
        if end < 0:
            problems.append(InterpolationProblem(i, "unclosed '${': write ${NAME} or ${NAME:-default}"))
            out.append(text[i:])
            break
        value, problem = _resolve(text[i + 2 : end], env)
        if problem is not None:
            problems.append(InterpolationProblem(i, problem))
            out.append(text[i : end + 1])
        else:
            out.append(value)
        i = end + 1
    return "".join(out), problems


def _resolve(body: str, env: Mapping[str, str]) -> tuple[str, str | None]:
    """The value of one ``${...}`` body, or an error message."""
    match = _NAME.match(body)
    if match is None:
        return (
            "",
            f"bad variable reference '${{{body}}}': a name is letters, digits and '_', not starting with a digit",
        )
    name, rest = match.group(), body[match.end() :]
    value = env.get(name)
    if rest == "":
        if value is None:
            return "", f"environment variable {name} is not set (give a default with ${{{name}:-value}})"
        return value, None
    if rest.startswith(":-"):
        return (value if value else rest[2:]), None
    if rest.startswith("-"):
        return (value if value is not None else rest[1:]), None
    return (
        "",
        f"bad variable reference '${{{body}}}': expected ${{{name}}}, ${{{name}:-default}} or ${{{name}-default}}",
    )


class EnvText(str):
    """A string value that came (at least partly) from an environment variable."""

    __slots__ = ()


_RESOLVER = yaml.resolver.Resolver()
_CONSTRUCTOR = yaml.constructor.SafeConstructor()


def typed_text(text: str) -> Any:
    """``text`` read as an unquoted YAML value: ``"9100"`` -> 9100, ``"true"`` -> True, ``""`` -> None."""
    tag = _RESOLVER.resolve(ScalarNode, text, (True, False))
    if tag in (
        "tag:yaml.org,2002:int",
        "tag:yaml.org,2002:float",
        "tag:yaml.org,2002:bool",
        "tag:yaml.org,2002:null",
    ):
        try:  # the tag's constructor directly: construct_object would cache every node it sees
            return _CONSTRUCTOR.yaml_constructors[tag](_CONSTRUCTOR, ScalarNode(tag, text))
        except (yaml.YAMLError, ValueError):
            return text
    return text
