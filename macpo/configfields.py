"""Config field helpers shared by the run config (``macpo.config``) and the trainer's
``TrainConfig``: fields with help text, building a dataclass from a YAML mapping with one-line
errors, safe YAML reading, and the non-default view that keys a run's steps.

A core module, so both configs import it and neither imports the other's internals.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import typing
from dataclasses import field
from pathlib import Path
from typing import Any, Callable, Optional

import yaml

from macpo.errors import UserError

# Far beyond any config limit, and float() of a 400-digit integer overflows.
MAX_CONFIG_INT = 10**18
MAX_CONFIG_BYTES = 16 << 20


def help_field(default, help: str, **metadata):
    """A field with TRL-style ``help`` metadata; mutable defaults are deep-copied per instance."""
    meta = {"help": help, **metadata}
    if isinstance(default, (list, dict)) or dataclasses.is_dataclass(default):
        return field(default_factory=lambda d=default: copy.deepcopy(d), metadata=meta)
    return field(default=default, metadata=meta)


def build(cls, data: Any, where: str, skip: tuple[str, ...] = (),
          coerce_field: Optional[Callable[[str, Any, str], Any]] = None):
    """Build dataclass ``cls`` from a plain mapping, refusing unknown keys and wrong types.

    ``coerce_field(name, value, where)``: how the top level's fields are built, when they need
    more than their type hints say (the run config's teachers, student and train stages)."""
    if dataclasses.is_dataclass(data):
        return data
    if not isinstance(data, dict):
        raise UserError(f"config {where or 'top level'}: expected a mapping, got {type(data).__name__}")
    names = {f.name: f for f in dataclasses.fields(cls) if f.name not in skip}
    unknown = sorted(set(data) - set(names))
    if unknown:
        extra = ""
        if set(unknown) & set(skip):
            extra = f" ({', '.join(sorted(set(unknown) & set(skip)))}: set per job by the run)"
        raise UserError(f"config {where or 'top level'}: unknown field(s) {', '.join(map(str, unknown))}{extra} "
                        f"(known: {', '.join(names)})")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in data.items():
        sub = f"{where}.{key}" if where else key
        kwargs[key] = coerce_field(key, value, sub) if coerce_field else coerce(hints[key], value, sub)
    return cls(**kwargs)


def coerce(hint: Any, value: Any, where: str):
    """``value`` as type ``hint``, or a one-line UserError naming ``where``."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is typing.Union:
        if value is None:  # Optional[X]
            return None
        return coerce(next(a for a in args if a is not type(None)), value, where)
    if origin is typing.Literal:
        if value not in args:
            raise UserError(f"config {where}: {value!r} is not one of {', '.join(map(str, args))}")
        return value
    if dataclasses.is_dataclass(hint):
        return build(hint, value, where)
    if hint is bool:
        if not isinstance(value, bool):
            raise UserError(f"config {where}: expected true/false, got {value!r}")
        return value
    if hint in (int, float):
        if isinstance(value, str):
            try:  # YAML 1.1 reads "2e-3" as a string
                value = float(value)
            except ValueError:
                pass
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise UserError(f"config {where}: expected a number, got {value!r}")
        if isinstance(value, int) and abs(value) > MAX_CONFIG_INT:
            raise UserError(f"config {where}: {str(value)[:12]}... ({len(str(abs(value)))} digits) is out of range")
        if not math.isfinite(value):  # nan/inf compare False with every bound; refuse them here, once
            raise UserError(f"config {where}: expected a finite number, got {value!r}")
        if hint is float:
            return float(value)
        if not float(value).is_integer():
            raise UserError(f"config {where}: expected an integer, got {value!r}")
        return int(value)
    if hint is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise UserError(f"config {where}: expected a string, got {value!r}")
        return str(value)
    if origin is list or hint is list:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list):
            raise UserError(f"config {where}: expected a list, got {value!r}")
        return [coerce(args[0], v, f"{where}[{i}]") for i, v in enumerate(value)] if args else value
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise UserError(f"config {where}: expected a mapping, got {value!r}")
        return value
    return value


def non_default(value: Any, default: Any = dataclasses.MISSING) -> Any:
    """``value`` as plain data without what equals its default (recursively): a dataclass field at
    the value its parent's default holds (else its declared default), a mapping key at the default
    mapping's. Step keys hash this view, so a field added later with a default leaves every finished
    step's key as it was."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out = {}
        for f in dataclasses.fields(value):
            v = getattr(value, f.name)
            if dataclasses.is_dataclass(default) and hasattr(default, f.name):
                d = getattr(default, f.name)
            elif f.default is not dataclasses.MISSING:
                d = f.default
            elif f.default_factory is not dataclasses.MISSING:
                d = f.default_factory()
            else:
                d = dataclasses.MISSING
            if d is dataclasses.MISSING or _plain(v) != _plain(d):
                out[f.name] = non_default(v, d)
        return out
    if isinstance(value, dict):
        base = default if isinstance(default, dict) else {}
        return {k: non_default(v, base.get(k, dataclasses.MISSING)) for k, v in value.items()
                if k not in base or _plain(v) != _plain(base[k])}
    if isinstance(value, (list, tuple)):
        return [non_default(v) for v in value]
    return value


def _plain(value: Any) -> Any:
    return dataclasses.asdict(value) if dataclasses.is_dataclass(value) and not isinstance(value, type) else value


# ---- reading YAML ------------------------------------------------------------------------------
class NoAliasLoader(yaml.SafeLoader):
    """PyYAML's safe loader without aliases: ``*name`` expands without limit (a few lines of
    nested aliases make gigabytes) and may refer to itself (a recursive value that no code
    downstream can walk). A config never needs them."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(
                None, None, f"line {event.start_mark.line + 1}: alias *{event.anchor} (YAML aliases are not allowed "
                "in a config; write the value out)", event.start_mark)
        return super().compose_node(parent, index)


def load_yaml(text: str, where: str):
    """``text`` parsed with the alias-free safe loader, or a one-line UserError naming ``where``."""
    try:
        return yaml.load(text, Loader=NoAliasLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise UserError(f"{where}: invalid YAML ({str(exc).splitlines()[0]})") from None
    except (ValueError, RecursionError) as exc:  # int('9'*5000) (Python's digit limit); 100k nested brackets
        raise UserError(f"{where}: invalid YAML ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None


def parse_scalar(text: str):
    """A ``--set`` value as YAML reads it (``2`` an int, ``[a, b]`` a list), else the text itself."""
    try:
        return yaml.load(text, Loader=NoAliasLoader)  # noqa: S506 - a SafeLoader subclass
    except (yaml.YAMLError, ValueError, RecursionError):
        return text


def read_config_text(p: Path) -> str:
    """A config file's text, refusing what is not one: a missing path, a folder or device
    (/dev/zero never ends), a huge file, bytes that are not UTF-8."""
    if not p.exists():
        raise UserError(f"config file {p} does not exist")
    if not p.is_file():
        raise UserError(f"config file {p} is not a regular file")
    try:
        with open(p, "rb") as fh:
            data = fh.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise UserError(f"config file {p}: cannot read it ({exc.strerror or exc})") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise UserError(f"config file {p} is larger than {MAX_CONFIG_BYTES >> 20} MiB; a config is a small YAML file")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"config file {p} is not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start})") from None
