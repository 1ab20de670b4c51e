"""The few config values read before jsonargparse parses: one place that scans the command line and files.

The base and size pick the classes' defaults (they must be known to build the parser's defaults), a resume
needs its checkpoint before the config is parsed, and ``hwm study`` names its experiment before any run.
Everything else is jsonargparse's job.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml


class PrescanError(ValueError):
    """A flag without its value, or a config file that is not a YAML mapping: one line, exit 2."""


def flag_value(args: Sequence[str], flag: str) -> str | None:
    """The value of ``flag VALUE`` / ``flag=VALUE`` in ``args`` (the last one wins), else None."""
    value = None
    for i, arg in enumerate(args):
        if arg == flag and i + 1 < len(args):
            value = args[i + 1]
        elif arg.startswith(flag + "="):
            value = arg.split("=", 1)[1]
    return value


def pop_flag(args: Sequence[str], flag: str) -> tuple[list[str], str | None]:
    """``args`` without ``flag VALUE`` / ``flag=VALUE``, and the (last) value."""
    rest: list[str] = []
    value, i = None, 0
    while i < len(args):
        if args[i] == flag:
            if i + 1 >= len(args):
                raise PrescanError(f"{flag} needs a value")
            value, i = args[i + 1], i + 2
        elif args[i].startswith(flag + "="):
            value, i = args[i].split("=", 1)[1], i + 1
        else:
            rest.append(args[i])
            i += 1
    return rest, value


def split_config_files(args: Sequence[str]) -> tuple[list[str], list[str]]:
    """(``--config FILE`` arguments, everything else), each in order."""
    files: list[str] = []
    rest: list[str] = []
    i = 0
    while i < len(args):
        if args[i] == "--config" and i + 1 < len(args):
            files += args[i : i + 2]
            i += 2
        elif args[i].startswith("--config="):
            files.append(args[i])
            i += 1
        else:
            rest.append(args[i])
            i += 1
    return files, rest


def config_paths(args: Sequence[str]) -> list[Path]:
    """The config files of ``args``, in order."""
    files, _ = split_config_files(args)
    out, i = [], 0
    while i < len(files):
        if files[i] == "--config":
            out.append(Path(files[i + 1]))
            i += 2
        else:
            out.append(Path(files[i].split("=", 1)[1]))
            i += 1
    return out


def read_config(path: Path) -> dict[str, Any]:
    """A config file as a mapping; {} for an empty file. Unreadable files are jsonargparse's to report."""
    try:
        loaded = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return {}
    return loaded if isinstance(loaded, dict) else {}


def nested(tree: Any, key: str) -> Any:
    """``tree["a"]["b"]`` for ``key`` "a.b"; None where a part is missing."""
    for part in key.split("."):
        tree = tree.get(part) if isinstance(tree, dict) else None
    return tree


def last_value(args: Sequence[str], key: str, default: Any = None) -> Any:
    """``key`` (dotted) as the command line sets it last: config files and ``--key value`` flags in order.

    A file that leaves the key out (or sets it to null) keeps the value before it; a flag of ``null`` sets
    None, as jsonargparse would.
    """
    value = default
    args = list(args)
    for i, arg in enumerate(args):
        name, eq, given = arg.partition("=")
        if not eq:
            given = args[i + 1] if i + 1 < len(args) else ""
        if name == "--config":
            found = nested(read_config(Path(given)), key)
            value = found if found is not None else value
        elif name == f"--{key}":
            value = None if given in ("null", "None", "") else given
    return value
