"""The snippets of README.md and docs/ work as shown: every `hwm fit | study | compare` command parses (its
config files exist, its keys are options), every `python -c` snippet prints what the page shows, and every
`hwm.` name the pages point to exists."""

from __future__ import annotations

import importlib
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import fit_parser

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
# Placeholders a reader fills in: such a command is a template, not one to run as it stands.
TEMPLATE = re.compile(r"<[^>]*>|\bFILE\d?\b|\[--|\.\.\.|--help|\.help\b|--print_config|\bN\b")
TAGS = {"hwm.study", "hwm.summary"}  # MLflow tag names, not code


def _blocks(page: Path) -> list[str]:
    """The page's fenced code blocks, with shell line continuations joined."""
    return [b.replace("\\\n", " ") for b in re.findall(r"```[a-z]*\n(.*?)```", page.read_text(), re.S)]


def _commands(tool: str) -> list[tuple[str, list[str]]]:
    """(page, arguments after `hwm TOOL`) of every `hwm TOOL ...` line in a code block, comments dropped."""
    found = []
    for page in PAGES:
        for block in _blocks(page):
            for line in block.splitlines():
                line = line.strip().removeprefix("$ ")
                line = re.sub(r"^(srun |[A-Z_]+=\S+ )+", "", line)
                if not line.startswith(f"hwm {tool} ") or TEMPLATE.search(line):
                    continue
                words = shlex.split(line, comments=True)
                if words[2:3] and words[2].endswith(":"):  # a line of output ("hwm study ID: 4 runs ...")
                    continue
                found.append((page.name, words[2:]))
    return found


def test_the_docs_show_commands_of_every_tool() -> None:
    assert len(_commands("fit")) >= 20 and _commands("study") and _commands("compare") is not None


def test_every_fit_command_in_the_docs_parses(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from hwm.cli.offline import wants_offline

    monkeypatch.chdir(tmp_path)
    parser = fit_parser()
    # `hwm fit --data.dataset ...` trains a world model alone (hwm.cli.offline): its own parser.
    offline_parser = fit_parser(offline=True)
    monkeypatch.chdir(REPO)  # the commands name configs relative to the checkout
    from hwm.experiments import study

    runs = list(_commands("fit"))
    for page, args in _commands("study"):  # each study's first run, as hwm study starts it
        if {"--status", "--resume"} & set(args):  # a study already started: no run of its own here
            continue
        plan = study.build(args)
        runs.append((page, plan.fit_args(plan.variants()[0], plan.seeds[0])))
    for page, args in runs:
        if "--ckpt_path" in args:  # read before parsing; the checkpoint is the reader's
            i = args.index("--ckpt_path")
            args = args[:i] + args[i + 2 :]
        try:
            (offline_parser if wants_offline(args) else parser).parse_args(args)
        except Exception as exc:  # any refusal is the finding
            pytest.fail(f"{page}: hwm fit {shlex.join(args)}: {' '.join(str(exc).split())[:300]}")


def test_every_study_and_compare_command_in_the_docs_parses(monkeypatch: pytest.MonkeyPatch) -> None:
    from hwm.experiments import compare, study

    monkeypatch.chdir(REPO)
    for page, args in _commands("study"):
        if {"--status", "--resume"} & set(args):  # names a study started earlier, elsewhere
            study.parser().parse_args(args)
            continue
        plan = study.build(args)
        assert all(Path(c).is_file() for c in plan.configs), (page, args)
    for _page, args in _commands("compare"):
        compare._parser().parse_args(args)


def test_python_snippets_print_what_the_docs_show() -> None:
    snippets = []
    for page in PAGES:
        for block in _blocks(page):
            lines = block.splitlines()
            for i, line in enumerate(lines):
                if line.startswith('$ python -c "'):
                    shown = [x.rstrip() for x in lines[i + 1 :] if not x.startswith("$ ")]
                    snippets.append((page.name, shlex.split(line[2:])[2], shown))
    assert snippets
    for page, code, shown in snippets:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, f"{page}: {code}\n{out.stderr[-2000:]}"
        assert [x.rstrip() for x in out.stdout.splitlines()] == shown, f"{page}: {code}"


def test_every_hwm_name_the_docs_point_to_exists() -> None:
    names = {
        (page.name, name)
        for page in PAGES
        for name in re.findall(r"`(hwm(?:\.\w+)+)(?:\(|`)", page.read_text())
        if name not in TAGS
    }
    assert len(names) > 5
    for page, name in sorted(names):
        parts = name.split(".")
        for cut in range(len(parts), 0, -1):
            try:
                obj = importlib.import_module(".".join(parts[:cut]))
                break
            except ImportError:
                continue
        for attr in parts[cut:]:
            assert hasattr(obj, attr), f"{page}: {name}"
            obj = getattr(obj, attr)
