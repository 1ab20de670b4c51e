"""Builds an offline wheelhouse of what hwm needs beyond the PyTorch (and Lightning) a GPU node already has.

    python tools/wheelhouse.py build --python 3.12 [--platform manylinux_2_28_x86_64] [--out wheelhouse]
    python wheelhouse/gpu_selfcheck.py [--cpu]          # on the node: pip --no-index install + self-check

``build`` resolves hwm's dependencies (pyproject.toml less ``LEFT_OUT``) for the target with pip's resolver
(torch a metadata-only stand-in: no CUDA wheels), keeps what the ``--assume-installed`` packages do not
bring, downloads those wheels, trims dm_control (``TRIM``), builds hwm's wheel, copies the self-check
beside them, checks offline that the set resolves with each ``--check-torch`` and fails above
``--max-mib``. Needs a package index; the install needs none. See docs/gpu.md.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: pip's copy of the same parser
    from pip._vendor import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]

# hwm's dependencies a GPU throughput run does not import, and what works without them.
LEFT_OUT: dict[str, str] = {
    "metaworld": "the Meta-world suite",
    "ale-py": "the Atari suite",
    "gymnasium": "the Atari and Meta-world suites (no DMC path imports it)",
    "mlflow": "the MLflow logger every conf/ preset names (run with --trainer.logger false), hwm study/compare",
    "matplotlib": "hwm compare's plots",
    "rliable": "hwm compare's IQM confidence intervals",
    "pandas": "hwm compare",
    "pillow": "evaluation GIFs (data.video_every); install pillow to have them",
}

# Parts of a wheel the control suite never imports (name -> (paths removed, requirements dropped)).
# dm_control's locomotion tree alone is 39 MB of the 56 MB wheel and is the only user of labmaze and
# requests; the dog domain's meshes are another 10 MB.
TRIM: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "dm-control": (("dm_control/locomotion/", "dm_control/suite/dog_assets/"), ("labmaze", "requests")),
}
TRIM_LOCAL = "suite"  # trimmed wheels get this local version label (1.0.28+suite still matches ==1.0.28)

# torch's own requirements (its CUDA libraries aside): present wherever torch is installed.
TORCH_REQUIRES = ("filelock", "typing-extensions", "setuptools", "sympy", "networkx", "jinja2", "fsspec")
# Copied into the wheelhouse (destination -> source under ROOT): what the self-check runs on the node.
SELFCHECK_FILES = {
    "gpu_selfcheck.py": "tools/gpu_selfcheck.py",
    "throughput.py": "benchmarks/throughput.py",
    # The harmonizer study on the GPU (docs/evidence.md): its script, the dataset recorder, the weightings.
    **{f"{n}.py": f"benchmarks/{n}.py" for n in ("harmonizer_gpu", "harmonizer_dataset", "harmonizer_study")},
    **{
        f"conf/{n}": f"conf/{n}"
        for n in ("dmc_cheetah.yaml", "dmc_cheetah_v3.yaml", "tiny.yaml", "tiny_v3.yaml")
    },
}
LEGACY_MANYLINUX = {"manylinux1": 5, "manylinux2010": 12, "manylinux2014": 17}


def platform_tags(platform: str) -> list[str]:
    """Every manylinux tag a glibc-``2.N`` node accepts, newest first: pip matches ``--platform`` exactly,
    so ``manylinux_2_28_x86_64`` alone would miss the many wheels tagged ``manylinux2014_x86_64``."""
    legacy = re.fullmatch(r"(manylinux1|manylinux2010|manylinux2014)_(\w+)", platform)
    m = re.fullmatch(r"manylinux_2_(\d+)_(\w+)", platform)
    if legacy:
        glibc, arch = LEGACY_MANYLINUX[legacy[1]], legacy[2]
    elif m:
        glibc, arch = int(m[1]), m[2]
    else:
        return [platform]
    tags = [f"manylinux_2_{n}_{arch}" for n in range(glibc, 4, -1)]
    tags += [f"{name}_{arch}" for name, n in LEGACY_MANYLINUX.items() if n <= glibc]
    return tags


def target_environment(python: str, platform: str) -> dict[str, str]:
    """PEP 508 marker values of a CPython ``python`` (e.g. "3.12") on a Linux ``platform``."""
    env = dict(default_environment())
    arch = platform.rsplit("_", 1)[-1] if "x86_64" not in platform else "x86_64"
    env.update(
        python_version=python,
        python_full_version=f"{python}.0",
        implementation_name="cpython",
        platform_python_implementation="CPython",
        sys_platform="linux",
        platform_system="Linux",
        os_name="posix",
        platform_machine=arch,
    )
    return env


def closure(roots: Iterable[str], requires: Mapping[str, list[str]], env: Mapping[str, str]) -> set[str]:
    """Canonical names of ``roots`` (requirement strings) and everything they need under ``env``'s markers,
    extras followed (``fsspec[http]`` brings aiohttp). ``requires``: canonical name -> Requires-Dist."""
    seen: set[tuple[str, str]] = set()
    stack = [Requirement(r) for r in roots]
    while stack:
        req = stack.pop()
        name = canonicalize_name(req.name)
        for extra in ("", *sorted(req.extras)):
            if (name, extra) in seen:
                continue
            seen.add((name, extra))
            for line in requires.get(name, []):
                dep = Requirement(line)
                if dep.marker is None or dep.marker.evaluate({**env, "extra": extra}):
                    stack.append(dep)
    return {name for name, _ in seen}


def hwm_roots(pyproject: Path = ROOT / "pyproject.toml") -> list[str]:
    """hwm's runtime requirements less ``LEFT_OUT``, as pyproject.toml states them."""
    deps = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    left_out = {canonicalize_name(n) for n in LEFT_OUT}
    return [d for d in deps if canonicalize_name(Requirement(d).name) not in left_out]


def stub_wheel(directory: Path, name: str, version: str, requires: Iterable[str] = ()) -> Path:
    """A metadata-only wheel: stands in for an installed package while resolving (torch for the target
    without its CUDA libraries; the assumed-installed ones when checking the wheelhouse offline)."""
    dist = f"{name.replace('-', '_')}-{version}"
    path = directory / f"{dist}-py3-none-any.whl"
    meta = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
    meta += "".join(f"Requires-Dist: {r}\n" for r in requires)
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(f"{dist}.dist-info/METADATA", meta)
        z.writestr(
            f"{dist}.dist-info/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        )
        z.writestr(f"{dist}.dist-info/RECORD", "")
    return path


def trim_wheel(wheel: Path, remove: tuple[str, ...], drop: tuple[str, ...], out_dir: Path) -> Path:
    """``wheel`` without the files under ``remove`` and the requirements named in ``drop``, as version
    ``<version>+suite``: its dist-info renamed and RECORD rewritten to match (hashes of kept files stand)."""
    name, version, tail = wheel.name.split("-", 2)
    new_dist, old_dist = f"{name}-{version}+{TRIM_LOCAL}", f"{name}-{version}"
    out = out_dir / f"{new_dist}-{tail}"
    dropped = {canonicalize_name(d) for d in drop}
    with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as dst:
        kept: list[str] = []
        for info in src.infolist():
            path = info.filename
            if path.startswith(remove) or path == f"{old_dist}.dist-info/RECORD":
                continue
            data = src.read(info)
            path = path.replace(f"{old_dist}.dist-info/", f"{new_dist}.dist-info/", 1)
            if path == f"{new_dist}.dist-info/METADATA":
                lines = data.decode().splitlines(keepends=True)
                lines = [
                    re.sub(r"^Version: .*", f"Version: {version}+{TRIM_LOCAL}", ln)
                    for ln in lines
                    if not (
                        ln.startswith("Requires-Dist:")
                        and canonicalize_name(Requirement(ln.split(":", 1)[1].strip()).name) in dropped
                    )
                ]
                data = "".join(lines).encode()
            dst.writestr(path, data)
            kept.append(path)
        record = src.read(f"{old_dist}.dist-info/RECORD").decode().splitlines()
        by_path = {ln.split(",", 1)[0]: ln for ln in record if ln}
        rows = [by_path.get(p.replace(new_dist, old_dist, 1), f"{p},,") for p in kept]
        rows = [r.replace(f"{old_dist}.dist-info/", f"{new_dist}.dist-info/", 1) for r in rows]
        # METADATA changed: its old hash would be wrong, so it is listed without one (allowed by the spec).
        rows = [f"{new_dist}.dist-info/METADATA,," if "dist-info/METADATA," in r else r for r in rows]
        dst.writestr(
            f"{new_dist}.dist-info/RECORD", "\n".join([*rows, f"{new_dist}.dist-info/RECORD,,"]) + "\n"
        )
    return out


def _pip(*args: str) -> None:
    cmd = [sys.executable, "-m", "pip", *args]
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def _target_args(python: str, platform: str) -> list[str]:
    args = ["--only-binary=:all:", "--python-version", python, "--implementation", "cp"]
    return args + [a for tag in platform_tags(platform) for a in ("--platform", tag)]


def resolve(roots: list[str], python: str, platform: str, torch: str, work: Path) -> dict[str, dict]:
    """pip's resolution of ``roots`` for the target: canonical name -> {"version", "requires"}; torch is
    a stand-in carrying only TORCH_REQUIRES."""
    stubs = work / "stubs"
    stubs.mkdir(parents=True, exist_ok=True)
    stub_wheel(stubs, "torch", f"{torch}+stub", TORCH_REQUIRES)
    reqs = work / "roots.txt"
    reqs.write_text("\n".join([*roots, f"torch=={torch}+stub"]) + "\n")
    report = work / "report.json"
    _pip("install", "--quiet", "--dry-run", "--ignore-installed", "--report", str(report),
         *_target_args(python, platform), "--target", str(work / "target"), "--find-links", str(stubs),
         "-r", str(reqs))  # fmt: skip
    return {
        canonicalize_name(item["metadata"]["name"]): {
            "version": item["metadata"]["version"],
            "requires": item["metadata"].get("requires_dist", []),
        }
        for item in json.loads(report.read_text())["install"]
    }


def select(
    roots: list[str], resolved: Mapping[str, dict], assumed: list[str], env: Mapping[str, str]
) -> tuple[set[str], set[str]]:
    """(what the wheelhouse carries, what the node is expected to have): the second is everything the
    assumed-installed packages (torch always among them) and their own requirements bring, the first the
    roots' closure less that, with TRIM's dropped requirements cut."""
    requires = {n: list(d["requires"]) for n, d in resolved.items()}
    for name, (_, drop) in TRIM.items():
        dropped = {canonicalize_name(d) for d in drop}
        requires[name] = [
            r for r in requires.get(name, []) if canonicalize_name(Requirement(r).name) not in dropped
        ]
    present = closure(["torch", *assumed], requires, env)
    return closure(roots, requires, env) - present, present


def size_mib(directory: Path) -> float:
    return sum(p.stat().st_size for p in directory.rglob("*") if p.is_file()) / 2**20


def build(args: argparse.Namespace) -> int:
    out: Path = args.out.resolve()
    if out.exists() and any(out.iterdir()):
        print(f"wheelhouse: error: {out} is not empty; remove it or name another --out", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    roots = hwm_roots()
    env = target_environment(args.python, args.platform)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        resolved = resolve(roots, args.python, args.platform, args.check_torch[0], work / "resolve")
        carried, present = select(roots, resolved, args.assume_installed, env)
        pins = sorted(f"{n}=={resolved[n]['version']}" for n in carried)
        _pip("download", "--quiet", "--no-deps", *_target_args(args.python, args.platform),
             "-d", str(work / "dl"), *pins)  # fmt: skip
        for wheel in sorted((work / "dl").glob("*.whl")):
            name = canonicalize_name(wheel.name.split("-", 1)[0])
            if name in TRIM:
                trim_wheel(wheel, *TRIM[name], out)
            else:
                shutil.copy2(wheel, out / wheel.name)
        # hwm's wheel with the build environment's setuptools where it has one (no index needed for it).
        no_isolation = ["--no-build-isolation"] if _has("setuptools") else []
        _pip("wheel", "--quiet", "--no-deps", *no_isolation, "-w", str(out), str(_source_copy(work / "hwm")))
        (out / "requirements.txt").write_text("\n".join(roots) + "\n")
        manifest = {
            "python": args.python,
            "platform": args.platform,
            "assumed_installed": ["torch", *args.assume_installed],
            "left_out": LEFT_OUT,
            "trimmed": {
                n: {"removed": list(r), "requirements_dropped": list(d)} for n, (r, d) in TRIM.items()
            },
            "carried": pins,
            "expected_installed": {n: resolved[n]["version"] for n in sorted(present) if n in resolved},
        }
        (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
        for dest, src in SELFCHECK_FILES.items():
            (out / dest).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / src, out / dest)
        for torch in args.check_torch:
            check_offline(out, args.python, args.platform, torch, manifest, work / f"check-{torch}")
    mib = size_mib(out)
    print(f"wheelhouse: {out}: {len(list(out.glob('*.whl')))} wheels, {mib:.1f} MiB")
    if args.max_mib and mib > args.max_mib:
        print(f"wheelhouse: error: {mib:.1f} MiB is over --max-mib {args.max_mib}", file=sys.stderr)
        return 1
    return 0


def _source_copy(dest: Path) -> Path:
    """What hwm's wheel is built from, copied: an in-tree build would leave build/ behind, and setuptools
    packs stale files from an old build/ into a new wheel."""
    shutil.copytree(ROOT / "src", dest / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, dest / name)
    return dest


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def check_offline(out: Path, python: str, platform: str, torch: str, manifest: dict, work: Path) -> None:
    """``pip install --no-index`` of the wheelhouse, dry, for the target, with torch ``torch`` and each
    assumed-installed package present as a stand-in: proves the set is complete and consistent."""
    stubs = work / "stubs"
    stubs.mkdir(parents=True)
    stub_wheel(stubs, "torch", torch)
    for name, version in manifest["expected_installed"].items():
        if name != "torch":
            stub_wheel(stubs, name, version)
    hwm_wheel = next(out.glob("hwm-*.whl"))
    _pip("install", "--quiet", "--dry-run", "--ignore-installed", "--no-index", *_target_args(python, platform),
         "--target", str(work / "target"), "--find-links", str(out), "--find-links", str(stubs),
         "-r", str(out / "requirements.txt"), f"torch=={torch}")  # fmt: skip
    print(f"wheelhouse: resolves offline with torch {torch} ({hwm_wheel.name} installs with --no-deps)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="download the wheels and build hwm's (needs a package index)")
    b.add_argument("--python", default="3.12", help="target CPython X.Y (default 3.12)")
    b.add_argument(
        "--platform", default="manylinux_2_28_x86_64", help="target platform tag (torchrl needs 2_28)"
    )
    b.add_argument("--out", type=Path, default=ROOT / "wheelhouse", help="empty or new folder")
    b.add_argument(
        "--assume-installed", nargs="*", default=["lightning"], metavar="NAME",
        help="packages the node has besides torch; they and their requirements are left out (default: lightning)",
    )  # fmt: skip
    b.add_argument(
        "--check-torch", nargs="+", default=["2.11.0", "2.13.0"], metavar="VERSION",
        help="torch releases the set must resolve with offline; the first one is resolved against",
    )  # fmt: skip
    b.add_argument("--max-mib", type=float, default=64.0, help="fail above this size (0: no limit)")
    args = parser.parse_args(argv)
    if not re.fullmatch(r"3\.\d+", args.python):
        print(f"wheelhouse: error: --python {args.python!r}: expected X.Y, e.g. 3.12", file=sys.stderr)
        return 2
    try:
        return build(args)
    except subprocess.CalledProcessError as e:
        print(f"wheelhouse: error: pip failed (exit {e.returncode}); see its output above", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
