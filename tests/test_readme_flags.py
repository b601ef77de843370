"""Every ``--section.field`` flag the README (and the RESULTS commands) names is one the CLI builds, spelled as
the CLI takes it: booleans as ``--x`` / ``--no-x`` (the CLI takes no True/False after them)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ovs3d.foundation.features import FeatureConfig
from ovs3d.methods.reconstruction import ReconstructionConfig
from ovs3d.methods.registry import method_config_type, method_names
from ovs3d.utils.config import field_specs, flag_name

ROOT = Path(__file__).resolve().parents[1]
FLAG = re.compile(r"--((?:semantic|recon|features|lerf)(?:\.[a-z0-9-]+)+)( (?:True|False)\b)?")


def _flags(cfg, prefix: str, out: dict[str, bool]) -> None:
    """flag name (without ``--``) -> whether it is a boolean, for every leaf setting of ``cfg``."""
    for spec in field_specs(cfg, prefix):
        out[flag_name(spec.path)[2:]] = spec.type is bool


def known_flags() -> dict[str, bool]:
    out: dict[str, bool] = {}
    _flags(ReconstructionConfig(), "recon.", out)
    _flags(FeatureConfig(), "features.", out)
    for method in method_names():
        cfg = method_config_type(method)
        if cfg is not None:
            _flags(cfg(), "semantic.", out)
            if method == "lerf":  # --lerf.* is another spelling of --semantic.* for --method lerf
                _flags(cfg(), "lerf.", out)
    return out


@pytest.mark.parametrize("doc", ["README.md", "bench/RESULTS.md"])
def test_documented_flags_exist_and_are_spelled_as_the_cli_takes_them(doc):
    flags = known_flags()
    text = (ROOT / doc).read_text()
    wrong = []
    for m in FLAG.finditer(text):
        name, value = m.group(1), m.group(2)
        head, _, last = name.rpartition(".")
        negated = f"{head}.{last[3:]}" if last.startswith("no-") else None
        if name in flags:
            if flags[name] and value:
                wrong.append(f"{m.group(0)} (a boolean: --{name} or --{head}.no-{last})")
        elif not (negated and flags.get(negated)):
            wrong.append(f"--{name} (no such setting)")
    assert not wrong, f"{doc}: " + "; ".join(sorted(set(wrong)))


def test_the_flag_pattern_sees_a_wrong_spelling():
    flags = known_flags()
    assert flags["semantic.use-fda"] is True and flags["features.pixel-clip.patch-divisors"] is False
    assert FLAG.search("run --semantic.use-fda False now").group(2) == " False"
