"""The typed configuration dataclasses: one generic (de)serialiser (run folders, checkpoints, CLI) and one
generic validation.

Validation: a field's allowed values are declared on the field itself, ``field(default=..., metadata=rule(ge=1))``
(:class:`Rule`); :func:`check_config` walks a config and its nested configs once, checks every field against
its rule and its type, and raises a one-line :class:`ConfigError` that names the field as a CLI flag
(``--recon.batch-size must be at least 1 (got 0)``) or as a field.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
import math
import types
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

from ovs3d.errors import OVS3DError

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


# -- validation ----------------------------------------------------------------------------------------------

RULE_KEY = "ovs3d.rule"
"""The ``dataclasses.field`` metadata key of a field's :class:`Rule`."""

INT64_MAX = 2**63 - 1


class ConfigError(OVS3DError, ValueError):
    """A setting outside its allowed values (one line, naming the flag or field)."""


@dataclass(frozen=True)
class Rule:
    """The allowed values of one config field, read by :func:`check_config`.

    Numbers (and each number of a tuple or list) are checked against the bounds; a bound given as a string
    names a sibling field whose value is the bound. ``None`` passes when the field's type allows it.
    Besides the rule, a field's type is checked: integers must be integers within int64, floats finite
    numbers, ``Literal`` fields one of their values.

    Attributes:
        ge: at least this (inclusive).
        gt: greater than this.
        le: at most this (inclusive).
        lt: less than this.
        choices: the allowed values (default: a ``Literal`` type's).
        ordered: a tuple is a range: its values do not decrease.
        min_len: a tuple or list holds at least this many values.
        path: ``"dir"``: an existing folder; ``"exists"``: an existing path; ``"not_file"``: a folder or
            nothing yet (an output folder).
        custom: ``custom(value, flag)`` raises :class:`~ovs3d.errors.OVS3DError` on a bad value (e.g.
            a backend spec), with ``flag`` the field's name in messages.
    """

    ge: float | str | None = None
    gt: float | str | None = None
    le: float | str | None = None
    lt: float | str | None = None
    choices: tuple[Any, ...] | None = None
    ordered: bool = False
    min_len: int = 0
    path: Literal["dir", "exists", "not_file"] | None = None
    custom: Callable[[Any, str], None] | None = None


def parse_number(text: str) -> float:
    """A float flag's value: a decimal (``0.25``, ``1e-3``) or a fraction of two (``1/3``, ``2.5/10``).

    Fractions are read exactly as Python divides, so ``1/3`` is the same double as a default written
    ``1 / 3`` (a run fitted with that default resumes when the flag is given as ``1/3``).

    Raises:
        ValueError: neither a number nor a fraction of two, or a fraction with a zero denominator.
    """
    try:
        numbers = [float(p) for p in text.strip().split("/")]
    except ValueError:
        numbers = []
    if len(numbers) not in (1, 2):
        raise ValueError(f"not a number or a fraction of two numbers: {text!r}")
    if len(numbers) == 1:
        return numbers[0]
    if numbers[1] == 0:
        raise ValueError(f"a fraction with a zero denominator: {text!r}")
    return numbers[0] / numbers[1]


def rule(**kwargs: Any) -> dict[str, Rule]:
    """Field metadata holding a :class:`Rule`: ``n_iters: int = field(default=300, metadata=rule(ge=1))``."""
    return {RULE_KEY: Rule(**kwargs)}


def flag_name(path: str) -> str:
    """The CLI flag of a config field path: ``recon.batch_size`` -> ``--recon.batch-size``."""
    return "--" + path.replace("_", "-")


def field_name(path: str) -> str:
    """A config field path as it is (library messages): ``recon.batch_size``."""
    return path


_DEFERRED: contextvars.ContextVar[bool] = contextvars.ContextVar("ovs3d_deferred_checks", default=False)


@contextlib.contextmanager
def deferred_checks() -> Iterator[None]:
    """Within the block :func:`check_on_init` does nothing (the CLI checks the whole parsed command once
    afterwards, naming flags as typed)."""
    token = _DEFERRED.set(True)
    try:
        yield
    finally:
        _DEFERRED.reset(token)


def check_on_init(cfg: Any) -> None:
    """For a config's ``__post_init__``: check its own fields now (nested configs check themselves),
    naming them as fields, unless within :func:`deferred_checks`."""
    if not _DEFERRED.get():
        check_config(cfg, name=field_name, recurse=False)


def check_config(
    cfg: Any, name: Callable[[str], str] = flag_name, prefix: str = "", recurse: bool = True, outside: bool = True
) -> None:
    """Check every field of a config dataclass (and of the configs nested in it) against its :class:`Rule`
    and its type.

    Args:
        cfg: a dataclass instance.
        name: how a field path (``recon.batch_size``) is named in the message (default: as a CLI flag).
        prefix: path of ``cfg`` inside the outermost config (``"recon."``).
        recurse: also check nested dataclass values.
        outside: also check what lies outside the config (``path`` rules, ``custom`` rules such as a backend's
            weights file); False for a stored run's configuration, whose scene or weights may have moved.

    Raises:
        ConfigError: the first field outside its allowed values, in one line: ``--recon.batch-size must be
            at least 1 (got 0)``.
    """
    hints = _hints(type(cfg))
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name, None)
        path = prefix + f.name
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            if recurse:
                check_config(value, name, path + ".", outside=outside)
            continue
        if value is None:
            continue
        r = f.metadata.get(RULE_KEY) or _NO_RULE
        _check_value(cfg, r, hints.get(f.name), value, path, prefix, name, outside)


_NO_RULE = Rule()


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(cls)
    except Exception:  # noqa: BLE001 - an unresolvable annotation: no type-derived checks
        return {}


def _strip_optional(tp: Any) -> Any:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0] if len(args) == 1 else tp
    return tp


def _fmt(v: Any) -> str:
    if isinstance(v, str):
        return repr(v)
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, (tuple, list)):
        return " ".join(_fmt(x) for x in v)
    return str(v)


def _check_value(
    cfg: Any, r: Rule, tp: Any, value: Any, path: str, prefix: str, name: Callable[[str], str], outside: bool
) -> None:
    flag = name(path)

    def fail(what: str) -> None:
        raise ConfigError(f"{flag} {what} (got {_fmt(value)})")

    tp = _strip_optional(tp)
    origin = typing.get_origin(tp)
    choices = r.choices
    if choices is None and origin is typing.Literal:
        choices = typing.get_args(tp)
    if choices is not None and value not in choices:
        fail(f"must be one of {', '.join(str(c) for c in choices)}")
    elem_tp = tp
    if origin in (tuple, list) or isinstance(value, (tuple, list)):
        args = [a for a in typing.get_args(tp) if a is not Ellipsis]
        elem_tp = args[0] if len(set(args)) == 1 else None
        items = list(value) if isinstance(value, (tuple, list)) else [value]
        if len(items) < r.min_len:
            fail(f"needs at least {r.min_len} values")
        if r.ordered and any(a > b for a, b in zip(items, items[1:])):
            fail("must be a range (low high)")
    else:
        items = [value]
    for x in items:
        _check_number(cfg, r, elem_tp, x, prefix, name, fail)
    if not outside:
        return
    if r.path is not None:
        _check_path(Path(value), r.path, flag)
    if r.custom is not None:
        r.custom(value, flag)


def _check_number(cfg: Any, r: Rule, tp: Any, x: Any, prefix: str, name: Callable[[str], str], fail) -> None:
    if tp is int or (tp is None and isinstance(x, int) and not isinstance(x, bool)):
        if not isinstance(x, int) or isinstance(x, bool):
            fail("must be an integer")
        if not -INT64_MAX - 1 <= x <= INT64_MAX:
            fail(f"must be within [{-INT64_MAX - 1}, {INT64_MAX}]")
    elif tp is float or (tp is None and isinstance(x, float)):
        if not isinstance(x, (int, float)) or isinstance(x, bool):
            fail("must be a number")
        if not math.isfinite(x):
            fail("must be a finite number")
    else:
        return
    lower = [(r.ge, ">="), (r.gt, ">")]
    upper = [(r.le, "<="), (r.lt, "<")]
    lo = next(((b, op) for b, op in lower if b is not None), None)
    hi = next(((b, op) for b, op in upper if b is not None), None)
    lo_v = None if lo is None else _bound(cfg, lo[0])
    hi_v = None if hi is None else _bound(cfg, hi[0])
    ok_lo = lo_v is None or (x >= lo_v if lo[1] == ">=" else x > lo_v)
    ok_hi = hi_v is None or (x <= hi_v if hi[1] == "<=" else x < hi_v)
    if ok_lo and ok_hi:
        return

    def show(bound: Any, value: Any) -> str:
        return f"{name(prefix + bound)} ({_fmt(value)})" if isinstance(bound, str) else _fmt(value)

    if lo is not None and hi is not None:
        left = "[" if lo[1] == ">=" else "("
        right = "]" if hi[1] == "<=" else ")"
        fail(f"must be in {left}{show(lo[0], lo_v)}, {show(hi[0], hi_v)}{right}")
    if lo is not None:
        fail(f"must be {'at least' if lo[1] == '>=' else 'greater than'} {show(lo[0], lo_v)}")
    fail(f"must be {'at most' if hi[1] == '<=' else 'less than'} {show(hi[0], hi_v)}")


def _bound(cfg: Any, bound: float | str) -> Any:
    return getattr(cfg, bound) if isinstance(bound, str) else bound


def _check_path(p: Path, kind: str, flag: str) -> None:
    if kind == "not_file":
        if p.exists() and not p.is_dir():
            raise ConfigError(f"{flag} {p} is a file, not a folder: choose a folder")
    elif not p.exists():
        raise ConfigError(f"{flag} {p} does not exist: check the path")
    elif kind == "dir" and not p.is_dir():
        raise ConfigError(f"{flag} {p} is not a folder: pass a folder")


# -- enumerating settings (the CLI fuzz test and bench/bench_validation.py) ----------------------------------


@dataclass(frozen=True)
class FieldSpec:
    """One setting of a config tree.

    Attributes:
        path: field path (``recon.batch_size``); :func:`flag_name` gives the flag.
        type: its annotation (``Optional`` kept).
        rule: its :class:`Rule` (an empty one when it declares none).
        owner: the config instance that holds it (resolves bounds that name a sibling field).
        declared: whether the field declares a rule.
    """

    path: str
    type: Any
    rule: Rule
    owner: Any
    declared: bool


def field_specs(cfg: Any, prefix: str = "") -> list[FieldSpec]:
    """Every leaf setting of a config instance, nested configs walked (their defaults)."""
    hints = _hints(type(cfg))
    out: list[FieldSpec] = []
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name, None)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            out += field_specs(value, f"{prefix}{f.name}.")
            continue
        r = f.metadata.get(RULE_KEY)
        out.append(FieldSpec(prefix + f.name, hints.get(f.name), r or _NO_RULE, cfg, r is not None))
    return out


HUGE = 10**30
"""A number past every range (and past int64)."""


def probe_values(spec: FieldSpec) -> list[tuple[list[str], bool]]:
    """Values to try on a numeric or choice setting from the command line, and whether each is invalid:
    ``0``, ``-1``, a huge number, a wrong type (and ``nan`` for floats, ``1.5`` for integers, an unknown
    name for choices and specs). Empty for other settings (flags, paths, free text)."""
    tp = _strip_optional(spec.type)
    origin = typing.get_origin(tp)
    if origin is Literal or (tp is str and spec.rule.custom is not None):
        return [(["bogus-value"], True)]
    count, elem = 1, tp
    if origin in (tuple, list):
        args = typing.get_args(tp)
        elem = args[0] if args else None
        count = len(args) if origin is tuple and Ellipsis not in args else 1
    if elem is int:
        raw = ["0", "-1", str(HUGE), "abc", "1.5"]
    elif elem is float:
        raw = ["0", "-1", f"{HUGE:.0e}", "nan", "abc"]
    else:
        return []
    out = []
    for text in raw:
        try:
            value = parse_number(text) if elem is float else elem(text)  # as the CLI reads it
            bad = False
            one = (value,) * count if origin in (tuple, list) else value
            _check_value(spec.owner, spec.rule, spec.type, one, spec.path, "", field_name, False)
        except ValueError:  # not a number of that type (ConfigError is a ValueError too: out of range)
            bad = True
        out.append(([text] * count, bad))
    return out
