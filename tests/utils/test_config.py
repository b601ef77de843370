"""The generic settings validation of :mod:`ovs3d.utils.config` (field rules read by one checker)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from ovs3d.errors import OVS3DError
from ovs3d.utils.config import (
    ConfigError,
    check_config,
    check_on_init,
    deferred_checks,
    field_name,
    field_specs,
    probe_values,
    rule,
)


@dataclass
class Inner:
    ratio: float = field(default=0.5, metadata=rule(gt=0, le=1))
    """A fraction."""
    sizes: tuple[int, int] = field(default=(1, 2), metadata=rule(ge=1, ordered=True))
    """A range."""


@dataclass
class Outer:
    n_views: int = field(default=6, metadata=rule(ge=2))
    n_annotated: int | None = field(default=None, metadata=rule(ge=1, le="n_views"))
    mode: Literal["a", "b"] = "a"
    weight: float = field(default=0.0, metadata=rule(ge=0))
    out: Path | None = field(default=None, metadata=rule(path="not_file"))
    name: str = field(default="ok", metadata=rule(custom=lambda v, flag: _no_bad(v, flag)))
    inner: Inner = field(default_factory=Inner)


def _no_bad(value: str, flag: str) -> None:
    if value == "bad":
        raise OVS3DError(f"{flag} cannot be 'bad'")


@dataclass
class SelfChecked:
    count: int = field(default=1, metadata=rule(ge=1))

    def __post_init__(self) -> None:
        check_on_init(self)


def message(cfg, **kw) -> str:
    with pytest.raises(OVS3DError) as err:
        check_config(cfg, **kw)
    assert "\n" not in str(err.value)
    return str(err.value)


def test_defaults_pass_and_zero_weight_is_valid():
    check_config(Outer())
    check_config(Outer(weight=0.0, n_annotated=6))


@pytest.mark.parametrize(
    ("cfg", "expected"),
    [
        (Outer(n_views=0), "--n-views must be at least 2 (got 0)"),
        (Outer(n_annotated=7), "--n-annotated must be in [1, --n-views (6)] (got 7)"),
        (Outer(mode="c"), "--mode must be one of a, b (got 'c')"),
        (Outer(weight=-1.0), "--weight must be at least 0 (got -1)"),
        (Outer(weight=float("nan")), "--weight must be a finite number (got nan)"),
        (Outer(n_views=10**30), "--n-views must be within"),
        (Outer(n_views=2.5), "--n-views must be an integer (got 2.5)"),
        (Outer(name="bad"), "--name cannot be 'bad'"),
        (Outer(inner=Inner(ratio=0.0)), "--inner.ratio must be in (0, 1] (got 0)"),
        (Outer(inner=Inner(sizes=(3, 2))), "--inner.sizes must be a range (low high) (got 3 2)"),
        (Outer(inner=Inner(sizes=(0, 2))), "--inner.sizes must be at least 1 (got 0 2)"),
    ],
)
def test_first_bad_setting_in_one_line(cfg, expected):
    assert message(cfg).startswith(expected)


def test_field_names_for_library_messages():
    assert message(Outer(inner=Inner(ratio=2.0)), name=field_name).startswith("inner.ratio must be in (0, 1]")


def test_paths_and_outside_checks(tmp_path: Path):
    (tmp_path / "f").write_text("x")
    assert "is a file" in message(Outer(out=tmp_path / "f"))
    check_config(Outer(out=tmp_path / "f", name="bad"), outside=False)  # a stored config: no path/custom checks
    check_config(Outer(out=tmp_path / "new"))


def test_config_error_is_a_value_error_and_post_init_can_defer():
    with pytest.raises(ValueError, match="count must be at least 1"):
        SelfChecked(count=0)
    with pytest.raises(ConfigError):
        SelfChecked(count=-1)
    with deferred_checks():
        cfg = SelfChecked(count=0)  # the CLI checks the whole command afterwards, with flag names
    assert message(cfg) == "--count must be at least 1 (got 0)"


def test_field_specs_and_probes():
    specs = {s.path: s for s in field_specs(Outer())}
    assert set(specs) == {"n_views", "n_annotated", "mode", "weight", "out", "name", "inner.ratio", "inner.sizes"}
    probes = {tuple(t): bad for t, bad in probe_values(specs["weight"])}
    assert probes[("0",)] is False and probes[("-1",)] is True and probes[("nan",)] is True
    probes = {tuple(t): bad for t, bad in probe_values(specs["inner.sizes"])}
    assert probes[("0", "0")] is True and ("abc", "abc") in probes
    assert probe_values(specs["mode"]) == [(["bogus-value"], True)]
    assert probe_values(specs["out"]) == []


@pytest.mark.parametrize(
    ("text", "value"),
    [("0.25", 0.25), ("1e-3", 1e-3), ("-2", -2.0), ("1/3", 1 / 3), (" 2.5 / 10 ", 0.25), ("-1/4", -0.25)],
)
def test_parse_number_reads_decimals_and_fractions(text, value):
    from ovs3d.utils.config import parse_number

    assert parse_number(text) == value  # exact: "1/3" must equal a default written 1 / 3


@pytest.mark.parametrize("text", ["", "abc", "1/0", "1/2/3", "/3", "1/", "a/3"])
def test_parse_number_refuses_what_is_not_a_number(text):
    from ovs3d.utils.config import parse_number

    with pytest.raises(ValueError, match="fraction"):
        parse_number(text)
