"""One informative line for what a user got wrong: jsonargparse's errors rewritten with "did you mean"."""

from __future__ import annotations

import difflib
import importlib
import inspect
import re
from typing import Any

from lightning.pytorch import Trainer

from hwm.agent import HarmonyDreamAgent
from hwm.checkpoints.callback import PeriodicCheckpoint
from hwm.checkpoints.preemption import Preemption
from hwm.data.datamodule import ReplayDataModule
from hwm.training.progress import FrameProgressBar
from hwm.training.tracking_buffer import TrackingBuffer


class ConfigError(Exception):
    """Bad user input: reported as one line, exit code 2."""


def one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


# The classes behind the top-level config groups, for "did you mean" hints on unknown keys.
_GROUP_CLASSES: dict[str, Any] = {
    "model": HarmonyDreamAgent,
    "data": ReplayDataModule,
    "trainer": Trainer,
    "progress_bar": FrameProgressBar,
    "checkpoint": PeriodicCheckpoint,
    "preemption": Preemption,
    "tracking": TrackingBuffer,
}
_TOP_LEVEL_KEYS = ["config", "print_config", "seed_everything", *_GROUP_CLASSES]


def _options(target: Any) -> list[str]:
    """Keyword names a class (or "module.Class" path) accepts; [] when unknown."""
    try:
        if isinstance(target, str):
            module, _, name = target.rpartition(".")
            target = getattr(importlib.import_module(module), name)
        params = inspect.signature(target).parameters.values()
    except Exception:
        return []
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    # Arguments without a default (env_info, obs_shape, ...) are filled in by the code, not the config.
    return [p.name for p in params if p.kind in kinds and p.default is not inspect.Parameter.empty]


def _key_options(key: str) -> list[str]:
    """The valid siblings of a config key, as far as they can be known cheaply."""
    if "." not in key:
        return _TOP_LEVEL_KEYS
    return _options(_GROUP_CLASSES.get(key.split(".")[0]))


def _unknown_key(key: str, options: list[str]) -> str:
    parent, _, name = key.rpartition(".")
    close = difflib.get_close_matches(name, options, n=1)
    if close:
        return f'Key "{key}" is not accepted; did you mean "{parent + "." if parent else ""}{close[0]}"?'
    if options and len(options) <= 20:
        where = f'under "{parent}"' if parent else "at the top level"
        return f'Key "{key}" is not accepted; valid keys {where}: {", ".join(options)}'
    return f'Key "{key}" is not accepted (hwm fit --help lists every key)'


def _type_name(text: str) -> str:
    """`<class 'int'>` -> `int`, `typing.Literal['a', 'b']` -> `one of 'a', 'b'`."""
    text = re.sub(r"<class '(?:builtins\.)?([\w.]+)'>", r"\1", text.strip())
    literal = re.fullmatch(r"(?:typing\.)?Literal\[(.*)\]", text)
    if literal:
        return f"one of {literal.group(1)}"
    return text.replace("NoneType", "None")


def explain_parse_error(exc: BaseException) -> str:
    """Reduces a (possibly long, multi-line, nested) jsonargparse error to one informative line."""
    raw = str(exc)
    # jsonargparse restates the expected type of a class-valued key and the whole parsed namespace.
    text = re.sub(r"Type \S.*? expects a function or a callable class: ", "", " ".join(raw.split()))
    key = ".".join(re.findall(r'Parser key "([^"]+)":', raw))
    option = re.search(r"Option '([^']+)' is not accepted", text)
    if option and key:
        class_path = re.search(r"class_path='([^']+)'", text)
        return _unknown_key(f"{key}.{option.group(1)}", _options(class_path.group(1)) if class_path else [])
    if option:  # an unknown top-level key in a config file
        return _unknown_key(option.group(1), _TOP_LEVEL_KEYS)
    group = re.search(r"Group '([^']+)' does not accept option '([^']+)'", text)
    if group:
        bad = ".".join(group.groups())
        return _unknown_key(bad, _key_options(bad))
    unrecognized = re.match(r"unrecognized arguments: --([\w.]+)", text)
    if unrecognized:
        bad = unrecognized.group(1)
        return _unknown_key(bad, _key_options(bad))
    union = re.search(
        r"Does not validate against any of the Union subtypes Subtypes: \[(.*?)\] .*Given value: (.*)$", text
    )
    if union and key:
        subtypes = " or ".join(_type_name(t) for t in re.split(r", (?![^\[]*\])", union.group(1)))
        return f'Key "{key}": expected {subtypes}; got {union.group(2)!r}'
    expected = re.search(r"Expected an? (.+?)\. Got value: (.*?)(?:\. Got value: .*)?$", text)
    if expected and key:
        return f'Key "{key}": expected {_type_name(expected.group(1))}; got {expected.group(2)!r}'
    text = re.sub(r"\.? Got value: Namespace\(.*$", "", text).replace('Parser key "', 'Key "')
    return text or type(exc).__name__
