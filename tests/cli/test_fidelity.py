"""docs/fidelity.md and the paper configs agree: every setting its tables list is what the config resolves to.

The tables list, per paper configuration, each setting's resolved value (``hwm fit --config FILE
--print_config``) beside the authors' value; this test reads both, so neither can drift from the other.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from hwm.checkpoints.validate import flatten
from hwm.cli.fit import build_cli

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "fidelity.md"
HEADING = re.compile(r"^### (.*`conf/[^`]+\.yaml`.*)$")
ROW = re.compile(r"^\|\s*`([\w.]+)`\s*\|\s*`([^`]*)`\s*\|(.*)\|\s*$")


def _tables() -> dict[tuple[str, ...], dict[str, Any]]:
    """{(config files...): {setting: value}} from the doc's config sections."""
    tables: dict[tuple[str, ...], dict[str, Any]] = {}
    current: tuple[str, ...] | None = None
    for line in DOC.read_text().splitlines():
        heading = HEADING.match(line)
        if heading:
            current = tuple(re.findall(r"`(conf/[^`]+\.yaml)`", heading.group(1)))
            tables[current] = {}
        elif line.startswith("## "):
            current = None
        elif current is not None:
            row = ROW.match(line)
            if row:
                tables[current][row.group(1)] = yaml.safe_load(row.group(2))
    return tables


def _resolved(files: tuple[str, ...], capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    args = [a for f in files for a in ("--config", str(REPO / f))]
    with pytest.raises(SystemExit):
        build_cli([*args, "--print_config"])
    config = yaml.safe_load(capsys.readouterr().out)
    # `model.world_model.deter` stands for `model.world_model.init_args.deter`.
    return {k.replace(".init_args.", "."): v for k, v in flatten(config).items()}


TABLES = _tables()


def test_the_doc_covers_every_paper_config() -> None:
    covered = {f for files in TABLES for f in files}
    paper = {"conf/atari100k.yaml", "conf/metaworld.yaml", "conf/dmc.yaml", "conf/distracted.yaml"}
    assert paper <= covered, f"no table for {sorted(paper - covered)}"
    assert all(len(rows) >= 10 for rows in TABLES.values()), {k: len(v) for k, v in TABLES.items()}


@pytest.mark.parametrize("files", list(TABLES), ids=[" + ".join(f) for f in TABLES])
def test_config_resolves_to_its_table(files: tuple[str, ...], capsys: pytest.CaptureFixture[str]) -> None:
    resolved = _resolved(files, capsys)
    wrong = {
        key: (value, resolved.get(key, "<missing>"))
        for key, value in TABLES[files].items()
        if key not in resolved or resolved[key] != value
    }
    assert not wrong, f"doc value vs resolved config: {wrong}"


def test_every_deviation_marked_in_a_table_is_explained() -> None:
    text = DOC.read_text()
    marked = set(re.findall(r"\|\s*(D\d+)\s*\|\s*$", text, flags=re.M))
    explained = set(re.findall(r"^#### (D\d+)\b", text, flags=re.M))
    assert marked, "no table row marks a deviation"
    assert marked <= explained, f"deviations without an explanation: {sorted(marked - explained)}"
