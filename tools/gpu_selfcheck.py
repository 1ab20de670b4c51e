"""Installs hwm from the wheelhouse this file lies in (pip --no-index) and runs a short self-check.

    python3 wheelhouse/gpu_selfcheck.py          # GPU: conf/dmc_cheetah.yaml and DreamerV3 S, fp32 and bf16
    python3 wheelhouse/gpu_selfcheck.py --cpu    # the same path at tiny sizes on the CPU

Run it with the Python that has the node's torch (a venv made with ``--system-site-packages`` keeps the
node's own packages untouched). Each run is ``throughput.py`` (benchmarks/throughput.py, copied here by
``tools/wheelhouse.py build``): a few updates after a warm-up, one JSON line appended to ``--out``. The
runs share ``--budget-s`` seconds (480: all within 8 minutes); a run that does not finish in what is
left is stopped and reported. Exit status: 0 all ran, 1 a run or pip failed, 2 this Python cannot take
the wheelhouse (wrong version, torch or an assumed package missing, no CUDA in GPU mode). Standard
library only: it runs before anything is installed.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
GPU_CONFIGS = {"dmc_cheetah": ["conf/dmc_cheetah.yaml"], "dreamerv3_S": ["conf/dmc_cheetah_v3.yaml"]}
# The tiny preset from pixels on cheetah-run: dm_control, EGL rendering and the CNNs, as on the GPU.
CPU_CONFIGS = {"tiny": ["conf/tiny.yaml"], "tiny_v3": ["conf/tiny.yaml", "conf/tiny_v3.yaml"]}
CPU_OVERRIDES = ["--trainer.accelerator", "cpu", "--data.task", "cheetah-run", "--data.from_pixels", "true"]
# pretrain 0: the measured updates then alternate with collection, so env frames/s is measured too.
GPU_OVERRIDES = ["--trainer.accelerator", "gpu", "--trainer.devices", "1", "--data.pretrain", "0"]
PRECISIONS = ("32-true", "bf16-mixed")


class SelfCheckError(Exception):
    """This Python cannot take the wheelhouse: one line for the user, exit status 2."""


@dataclass(frozen=True)
class Run:
    name: str
    precision: str
    argv: list[str]


def plan(cpu: bool, updates: int, warmup: int, bf16: bool = True) -> list[Run]:
    """The throughput.py runs of the self-check, in order."""
    configs, overrides = (CPU_CONFIGS, CPU_OVERRIDES) if cpu else (GPU_CONFIGS, GPU_OVERRIDES)
    precisions = PRECISIONS if bf16 else PRECISIONS[:1]
    return [
        Run(
            name,
            precision,
            [
                *(a for c in files for a in ("--config", c)),
                "--updates",
                str(updates),
                "--warmup",
                str(warmup),
                *overrides,
                "--trainer.precision",
                precision,
            ],
        )  # fmt: skip
        for name, files in configs.items()
        for precision in precisions
    ]


def check_python(wheelhouse: Path) -> dict:
    """The wheelhouse's manifest, once this Python is the one it was built for and has what it assumes."""
    manifest_path = wheelhouse / "manifest.json"
    if not manifest_path.is_file():
        raise SelfCheckError(f"{wheelhouse} has no manifest.json: build it with tools/wheelhouse.py build")
    manifest = json.loads(manifest_path.read_text())
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    if manifest["python"] != here:
        raise SelfCheckError(
            f"this wheelhouse is for CPython {manifest['python']}, {sys.executable} is {here}: "
            f"use a Python {manifest['python']} or rebuild with --python {here}"
        )
    for name in manifest["assumed_installed"]:
        try:
            importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            raise SelfCheckError(
                f"{name} is not installed for {sys.executable}, and the wheelhouse assumes it is: install it, "
                f"or rebuild without it in --assume-installed (torch must come from the node)"
            ) from None
    return manifest


def cuda_problem() -> str | None:
    """Why GPU mode cannot run here, or None when torch sees a CUDA device."""
    import torch

    if torch.cuda.is_available():
        return None
    if torch.version.cuda is None:
        return f"torch {torch.__version__} is a CPU-only build: use the node's CUDA build of torch, or --cpu"
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    return (
        f"torch {torch.__version__} (CUDA {torch.version.cuda}) sees no GPU (CUDA_VISIBLE_DEVICES={visible!r}): "
        "run on a GPU node (inside a job that was given one), or with --cpu"
    )


def bf16_supported(cpu: bool) -> bool:
    import torch

    return cpu or torch.cuda.is_bf16_supported()


def pip_install(wheelhouse: Path) -> None:
    """The wheelhouse into this Python, offline; hwm itself without its dependencies (the left-out ones)."""
    base = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--find-links", str(wheelhouse)]
    hwm_wheels = sorted(wheelhouse.glob("hwm-*.whl"))
    if not hwm_wheels:
        raise SelfCheckError(f"{wheelhouse} has no hwm wheel: build it with tools/wheelhouse.py build")
    for cmd in ([*base, "-r", str(wheelhouse / "requirements.txt")],
                [*base, "--no-deps", "--force-reinstall", str(hwm_wheels[-1])]):  # fmt: skip
        print("+", " ".join(cmd), flush=True)
        if subprocess.run(cmd).returncode != 0:
            raise RuntimeError(f"pip failed: {' '.join(cmd)}")


def run_one(run: Run, wheelhouse: Path, timeout: float) -> dict | str:
    """One throughput.py run: its JSON line, or why there is none."""
    env = {**os.environ}
    env.setdefault("MUJOCO_GL", "egl")
    env.setdefault("PYOPENGL_PLATFORM", env["MUJOCO_GL"])
    cmd = [sys.executable, str(wheelhouse / "throughput.py"), *run.argv]
    print("+", " ".join(cmd), flush=True)
    try:
        proc = subprocess.run(cmd, cwd=wheelhouse, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return f"stopped after {timeout:.0f} s (the self-check's budget)"
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = "\n".join(proc.stderr.splitlines()[-25:])
        return f"throughput.py exited with {proc.returncode}:\n{tail}"
    return json.loads(lines[-1])


def self_check(runs: list[Run], wheelhouse: Path, out: Path, budget_s: float) -> int:
    """Runs ``runs`` within ``budget_s`` seconds, appending each JSON line to ``out``; prints a summary."""
    deadline = time.monotonic() + budget_s
    failures = 0
    out.write_text("")
    for run in runs:
        left = deadline - time.monotonic()
        result = run_one(run, wheelhouse, left) if left > 1 else "not started: the budget was spent"
        if isinstance(result, str):
            failures += 1
            print(f"self-check: {run.name} {run.precision}: FAILED: {result}", flush=True)
            continue
        with out.open("a") as f:
            f.write(json.dumps(result) + "\n")
        print(
            f"self-check: {run.name} {run.precision}: {result['updates_per_s']:.2f} updates/s, "
            f"{result['s_per_update']:.3f} s/update, {result['env_frames_per_s']:.0f} env frames/s "
            f"on {result['device']}",
            flush=True,
        )
    print(f"self-check: {len(runs) - failures} of {len(runs)} runs in {out}")
    return 1 if failures else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--wheelhouse", type=Path, default=HERE, help="default: this file's folder")
    parser.add_argument("--cpu", action="store_true", help="tiny sizes on the CPU (no GPU needed)")
    parser.add_argument("--no-install", action="store_true", help="only the self-check")
    parser.add_argument("--out", type=Path, help="JSON lines file (default: selfcheck-gpu.jsonl / -cpu)")
    parser.add_argument("--budget-s", type=float, default=480.0, help="seconds for all runs (default 480)")
    parser.add_argument("--updates", type=int, help="measured updates per run (GPU 10, CPU 2)")
    parser.add_argument("--warmup", type=int, help="updates before measuring (GPU 3, CPU 1)")
    args = parser.parse_args(argv)
    wheelhouse = args.wheelhouse.resolve()
    out = (args.out or Path(f"selfcheck-{'cpu' if args.cpu else 'gpu'}.jsonl")).resolve()
    try:
        if importlib.util.find_spec("torch") is None:
            raise SelfCheckError(
                f"torch is not installed for {sys.executable}: install the node's PyTorch first"
            )
        if not args.no_install:
            check_python(wheelhouse)
        problem = None if args.cpu else cuda_problem()
        if problem:
            raise SelfCheckError(problem)
        if not args.no_install:
            pip_install(wheelhouse)
        bf16 = bf16_supported(args.cpu)
        if not bf16:
            print("self-check: this GPU has no bf16: the bf16-mixed runs are skipped", flush=True)
        updates = args.updates or (2 if args.cpu else 10)
        warmup = args.warmup or (1 if args.cpu else 3)
        return self_check(plan(args.cpu, updates, warmup, bf16), wheelhouse, out, args.budget_s)
    except SelfCheckError as e:
        print(f"gpu_selfcheck: error: {e}", file=sys.stderr)
        return 2
    except RuntimeError as e:
        print(f"gpu_selfcheck: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
