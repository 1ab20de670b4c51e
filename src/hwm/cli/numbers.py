"""Whole-number options written as people write budgets: ``--data.total_frames 1e5`` or ``2.5e5``.

The parser reads ``1e5`` as the float 100000.0 and refuses it for an ``int`` option. A flag value that is a
whole number in float notation goes on as the integer it is, for options typed ``int`` only: a run name of
``1e5`` stays text, and a float option takes the integer as the same number.
"""

from __future__ import annotations

import functools
import inspect
import math
import types
import typing
from collections.abc import Sequence
from typing import Any


def _is_int(hint: Any) -> bool:
    """``int``, or ``int | None``."""
    if hint is int:
        return True
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = set(typing.get_args(hint)) - {type(None)}
        return args == {int}
    return False


@functools.cache
def int_options(groups: tuple[tuple[str, Any], ...] = ()) -> frozenset[str]:
    """``group.name`` of every ``int`` keyword of the classes behind the config groups: ``hwm fit``'s, with
    ``groups`` in place of some (the offline mode's learner and dataset)."""
    from hwm.cli.errors import GROUP_CLASSES

    out = set()
    for group, cls in {**GROUP_CLASSES, **dict(groups)}.items():
        try:
            hints = typing.get_type_hints(cls.__init__)
        except Exception:  # a hint that names what its module cannot resolve: read them one by one
            hints = {p.name: p.annotation for p in inspect.signature(cls.__init__).parameters.values()}
        out |= {f"{group}.{name}" for name, hint in hints.items() if _is_int(hint)}
    return frozenset(out)


def _whole(text: str) -> str | None:
    """``"1e5"`` -> ``"100000"``; None for anything that is not a whole number written as a float."""
    try:
        value = float(text)
    except ValueError:
        return None
    if not math.isfinite(value) or value != int(value) or text.strip().lstrip("+-").isdigit():
        return None
    return str(int(value))


def whole_numbers(args: Sequence[str], groups: tuple[tuple[str, Any], ...] = ()) -> list[str]:
    """``args`` with the values of ``int`` options written as floats (``1e5``, ``250000.0``) as integers;
    ``groups``: classes that replace ``hwm fit``'s behind some groups (see ``int_options``)."""
    out = list(args)
    options = int_options(groups)
    for i, arg in enumerate(out):
        name, eq, value = arg.partition("=")
        if not name.startswith("--") or name[2:] not in options:
            continue
        if eq:
            whole = _whole(value)
            if whole is not None:
                out[i] = f"{name}={whole}"
        elif i + 1 < len(out):
            whole = _whole(out[i + 1])
            if whole is not None:
                out[i + 1] = whole
    return out
