"""One informative line for what a user got wrong: jsonargparse's errors rewritten with "did you mean"."""

from __future__ import annotations

import difflib
import importlib
import inspect
import re
from collections.abc import Sequence
from typing import Any

from lightning.pytorch import Trainer

from hwm.agent import HarmonyDreamAgent
from hwm.checkpoints.callback import PeriodicCheckpoint
from hwm.checkpoints.preemption import Preemption
from hwm.config.prescan import config_paths, last_value, read_config
from hwm.data.datamodule import ReplayDataModule
from hwm.training.progress import FrameProgressBar
from hwm.training.tracking_buffer import TrackingBuffer


class ConfigError(Exception):
    """Bad user input: reported as one line, exit code 2."""


def one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


# The classes behind the top-level config groups, for "did you mean" hints on unknown keys.
GROUP_CLASSES: dict[str, Any] = {
    "model": HarmonyDreamAgent,
    "data": ReplayDataModule,
    "trainer": Trainer,
    "progress_bar": FrameProgressBar,
    "checkpoint": PeriodicCheckpoint,
    "preemption": Preemption,
    "tracking": TrackingBuffer,
}
_TOP_LEVEL_KEYS = ["config", "print_config", "seed_everything", "ckpt_path", *GROUP_CLASSES]


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
    return _options(GROUP_CLASSES.get(key.split(".")[0]))


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


# Options whose value is a class with options of its own (``class_path`` / ``init_args``, or the options
# given directly); their children are checked too. Other mappings (``data.env_options``) are free-form.
_CLASS_OPTIONS = {"model.world_model": 0, "model.actor_critic": 1, "trainer.logger": None}
_CLASS_KEYS = ["class_path", "init_args", "dict_kwargs"]


def _class_options(option: str, value: Any, base: str) -> list[str] | None:
    """The options of the class an option is given as (its ``class_path``, else the base's default)."""
    path = value.get("class_path") if isinstance(value, dict) else None
    which = _CLASS_OPTIONS[option]
    if path is None and which is not None:
        from hwm.models import presets

        cls = presets.CLASSES.get(base, presets.CLASSES["dreamerv2"])[which]
        return _options(cls) + _CLASS_KEYS
    return _options(path) + _CLASS_KEYS if path else None


def unknown_keys(config: dict[str, Any], base: str = "dreamerv2") -> list[str]:
    """Every key of a config file that no option accepts, each with its "did you mean" (if one is close)."""
    found: list[str] = []

    def check(key: str, options: list[str]) -> None:
        parent, _, name = key.rpartition(".")
        if not options or name in options:
            return
        close = difflib.get_close_matches(name, options, n=1)
        prefix = f"{parent}." if parent else ""
        found.append(f'"{key}"' + (f' (did you mean "{prefix}{close[0]}"?)' if close else ""))

    for top, section in config.items():
        check(top, _TOP_LEVEL_KEYS)
        if top not in GROUP_CLASSES or not isinstance(section, dict):
            continue
        options = _options(GROUP_CLASSES[top])
        for name, value in section.items():
            check(f"{top}.{name}", options)
            option = f"{top}.{name}"
            if option not in _CLASS_OPTIONS or not isinstance(value, dict):
                continue
            inner = _class_options(option, value, base)
            if inner is None:
                continue
            given = value.get("init_args")
            args: dict[str, Any] = given if isinstance(given, dict) else {}
            for key in [*value, *(f"init_args.{k}" for k in args)]:
                if key != "init_args":
                    check(f"{option}.{key}", inner)
    return found


def _as_whole_number(wanted: str, got: str) -> str:
    """A hint for ``1e5`` where an int is wanted (YAML reads it as text: a config file must spell it out)."""
    try:
        value = float(got)
    except ValueError:
        return ""
    return f" (write {int(value)})" if "int" in wanted and value.is_integer() else ""


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
        wanted, got = _type_name(expected.group(1)), expected.group(2)
        return f'Key "{key}": expected {wanted}; got {got!r}' + _as_whole_number(wanted, got)
    text = re.sub(r"\.? Got value: Namespace\(.*$", "", text).replace('Parser key "', 'Key "')
    return text or type(exc).__name__


def explain_config_error(exc: BaseException, args: Sequence[str]) -> str:
    """``explain_parse_error``; for an unknown key, every unknown key of each config file given, by file
    (jsonargparse stops at the first and does not say where it was)."""
    message = explain_parse_error(exc)
    if "is not accepted" not in message:
        return message
    base = str(last_value(args, "model.base", "dreamerv2"))
    found = []
    for path in config_paths(args):
        keys = unknown_keys(read_config(path), base)
        if keys:
            what = "an unknown key" if len(keys) == 1 else f"{len(keys)} unknown keys"
            found.append(f"config file {str(path)!r} has {what}: {', '.join(keys)}")
    return "; ".join(found) or message
