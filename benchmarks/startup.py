"""How fast hwm's quick commands start: wall time per command and Python's own import time (-X importtime).

    python benchmarks/startup.py --repeats 5 --out benchmarks/results/startup.json

Each case is a fresh ``python -X importtime -m hwm.cli ...`` process run in an empty temporary folder (so
``hwm compare`` finds no store and ``hwm fit`` no checkpoint). Reported per case: the median wall time of the
process, the median total import time that ``-X importtime`` reports (the sum of the top-level imports'
cumulative times), the slowest top-level imports, and whether Lightning or TorchRL was imported at all.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CASES: dict[str, list[str]] = {
    "hwm --help": ["--help"],
    "hwm --version": ["--version"],
    "hwm compare --help": ["compare", "--help"],
    "hwm compare (no store here: one-line error)": ["compare"],
    "hwm study --dry-run": [
        "study",
        "--config",
        str(REPO / "conf/tiny.yaml"),
        "--seeds",
        "0",
        "1",
        "--dry-run",
    ],
    "hwm fit, malformed YAML (one-line error)": ["fit", "--config", "bad.yaml"],
    "hwm fit, missing config file (one-line error)": ["fit", "--config", "missing.yaml"],
    # For contrast: an error only the full parser can find needs Lightning and the classes it builds.
    "hwm fit, unknown key (one-line error, full parser)": [
        "fit",
        "--config",
        str(REPO / "conf/tiny.yaml"),
        "--model.nope",
        "1",
    ],
}
HEAVY = ("lightning", "torchrl", "torch", "mlflow", "dm_control", "mujoco")
LINE = re.compile(r"import time:\s+(\d+)\s+\|\s+(\d+)\s+\|(\s*)(\S+)")


def measure(args: list[str], cwd: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "hwm.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    wall = time.perf_counter() - start
    top: list[tuple[str, int]] = []
    modules = set()
    for match in LINE.finditer(proc.stderr):
        _, cumulative, indent, name = match.groups()
        modules.add(name.split(".")[0])
        if len(indent) == 1:  # a top-level import (nested ones are indented further)
            top.append((name, int(cumulative)))
    return {
        "exit_code": proc.returncode,
        "wall_s": wall,
        "import_s": sum(us for _, us in top) / 1e6,
        "slowest_imports": [(n, round(us / 1e6, 3)) for n, us in sorted(top, key=lambda t: -t[1])[:5]],
        "heavy_imported": sorted(m for m in HEAVY if m in modules),
        "last_stderr_line": next(
            (line for line in reversed(proc.stderr.splitlines()) if not line.startswith("import time:")), ""
        ),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=5, help="processes per case (medians are reported)")
    p.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = p.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        cwd = Path(tmp)
        (cwd / "bad.yaml").write_text("model: [1, 2\n")
        for name, case in CASES.items():
            runs = [measure(case, cwd) for _ in range(args.repeats)]
            results[name] = {
                "command": "hwm " + " ".join(case),
                "exit_code": runs[-1]["exit_code"],
                "wall_s_median": round(statistics.median(r["wall_s"] for r in runs), 3),
                "import_s_median": round(statistics.median(r["import_s"] for r in runs), 3),
                "slowest_imports": runs[-1]["slowest_imports"],
                "heavy_imported": runs[-1]["heavy_imported"],
                "last_stderr_line": runs[-1]["last_stderr_line"][:200],
            }
            print(
                f"{name:<48} exit {results[name]['exit_code']}  wall {results[name]['wall_s_median']:.2f} s  "
                f"imports {results[name]['import_s_median']:.2f} s  heavy: {results[name]['heavy_imported']}",
                flush=True,
            )
    record = {
        "measured": time.strftime("%Y-%m-%d %H:%M:%S"),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg(),
        "repeats": args.repeats,
        "cases": results,
    }
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
