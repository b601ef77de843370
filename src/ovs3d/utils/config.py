"""One generic (de)serialiser for the typed configuration dataclasses (run folders, checkpoints, CLI)."""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """Plain JSON types of a config dataclass (nested dataclasses as dicts, tuples as lists, paths as str)."""

    def plain(x: Any) -> Any:
        if dataclasses.is_dataclass(x) and not isinstance(x, type):
            return {f.name: plain(getattr(x, f.name)) for f in dataclasses.fields(x)}
        if isinstance(x, (list, tuple)):
            return [plain(v) for v in x]
        if isinstance(x, dict):
            return {str(k): plain(v) for k, v in x.items()}
        if isinstance(x, Path):
            return str(x)
        return x

    return plain(cfg)


def _convert(tp: Any, value: Any) -> Any:
    if value is None:
        return None
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            if arg is type(None):
                continue
            if dataclasses.is_dataclass(arg) and isinstance(value, dict):
                return config_from_dict(arg, value)
            if arg is Path or typing.get_origin(arg) is tuple:
                return _convert(arg, value)
        return value
    if dataclasses.is_dataclass(tp) and isinstance(value, dict):
        return config_from_dict(tp, value)
    if tp is Path:
        return Path(value)
    if origin is tuple and isinstance(value, (list, tuple)):
        return tuple(value)
    return value


def config_from_dict(cls: type[T], data: dict[str, Any], legacy: dict[str, Any] | None = None) -> T:
    """Rebuild a config dataclass from :func:`config_to_dict` (or ``asdict``) output.

    Nested dataclasses, tuples and paths get their types back from the annotations. Keys the class does
    not know are ignored; fields the data lacks take ``legacy``'s value when given (what a setting added
    later meant before it existed), else the default.

    Args:
        cls: the dataclass.
        data: the stored dictionary.
        legacy: values for fields missing from ``data``.

    Returns:
        An instance of ``cls``.
    """
    hints = typing.get_type_hints(cls)
    merged = {**(legacy or {}), **data}
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name in merged and f.init:
            kwargs[f.name] = _convert(hints[f.name], merged[f.name])
    return cls(**kwargs)
