"""Click options generated from a ``Config`` dataclass, so the list exists once.

Each init field becomes ``--field-name`` (type from its annotation's default),
read also from ``CHANNELS_LITE_FIELD_NAME``; ``redis_url`` also from
``REDIS_URL``. A boolean field becomes a ``--field-name/--no-field-name``
flag. Help text comes from the dataclass's ``Attributes:`` docstring.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])


def _attribute_docs(cls: type) -> dict[str, str]:
    docs: dict[str, str] = {}
    text = cls.__doc__ or ""
    section = text.partition("Attributes:")[2]
    current = None
    for line in section.splitlines():
        match = re.match(r"^\s{8}(\w+): (.*)$", line)
        if match:
            current = match[1]
            docs[current] = match[2].strip()
        elif current and line.strip():
            docs[current] += " " + line.strip()
    return docs


def config_options(cls: type, *, skip: tuple[str, ...] = ()) -> Callable[[F], F]:
    """Decorate a click command with one option per field of ``cls``."""
    docs = _attribute_docs(cls)

    def decorate(fn: F) -> F:
        for field in reversed(dataclasses.fields(cls)):
            if not field.init or field.name in skip:
                continue
            envvars = [f"CHANNELS_LITE_{field.name.upper()}"]
            if field.name == "redis_url":
                envvars.append("REDIS_URL")
            default = field.default
            kind = type(default) if default is not dataclasses.MISSING else str
            flag = field.name.replace("_", "-")
            # `--no-x` reads better than `--x false`, and is what uvicorn's own
            # boolean options look like.
            names = [f"--{flag}/--no-{flag}"] if kind is bool else [f"--{flag}"]
            fn = click.option(
                *names,
                field.name,
                type=kind,
                default=default,
                show_default=True,
                envvar=envvars,
                show_envvar=True,
                help=docs.get(field.name, ""),
            )(fn)
        return fn

    return decorate
