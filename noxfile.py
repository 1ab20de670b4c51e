"""Nox sessions for hwm.

    nox -s tests      # default test selection (pyproject deselects `slow`)
    nox -s slow       # the long-running tests only
    nox -s slow_ci    # the long-running tests that alone cover a behaviour (CI runs them after `tests`)
    nox -s lint       # ruff check + ruff format --check, mypy (types, the run's contracts), lint-imports (layers)
    nox -s fit        # hwm fit --config conf/dmc_cheetah.yaml (posargs replace the default)

Virtualenvs are reused between runs (``nox.options.reuse_venv = "yes"``); pass ``--reuse-venv=no``
to rebuild one from scratch, or ``-R`` to also skip the install steps.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import nox

nox.options.sessions = ["lint", "tests"]
nox.options.reuse_venv = "yes"

PYTHON = "3.11"
# Installed before the project so pip keeps the CPU wheel; pyproject's `torch<2.14` then holds it.
TORCH = "torch==2.13.0"
# Optional: install torch from another index, e.g. https://download.pytorch.org/whl/cpu or .../cu126.
TORCH_INDEX_URL = os.environ.get("HWM_TORCH_INDEX_URL")
# Debian packages for headless MuJoCo rendering through EGL (Mesa llvmpipe on machines without a GPU).
GL_PACKAGES = ["libegl1", "libegl-mesa0", "libgl1-mesa-dri", "libopengl0"]
# Debian packages of the single-node SLURM the study tests start (slurmctld, slurmd, munged, sbatch, ...).
SLURM_PACKAGES = ["slurm-wlm", "munge"]
LINT_PATHS = ["src", "tests", "benchmarks", "tools", "noxfile.py"]


def _ensure_debian_packages(session: nox.Session, packages: list[str], why: str) -> None:
    """Install the Debian packages that are missing (root, or passwordless sudo)."""
    if shutil.which("dpkg") is None:
        session.warn(f"dpkg not found (not Debian?): make sure {why} is available ({' '.join(packages)})")
        return
    missing = [
        pkg
        for pkg in packages
        if subprocess.run(["dpkg", "-s", pkg], capture_output=True, check=False).returncode != 0
    ]
    if not missing:
        return
    if os.geteuid() == 0:
        prefix: list[str] = []
    elif shutil.which("sudo") and subprocess.run(["sudo", "-n", "true"], capture_output=True).returncode == 0:
        prefix = ["sudo", "-n"]
    else:
        session.error(
            f"missing Debian packages for {why}; run: "
            f"sudo apt-get install -y --no-install-recommends {' '.join(missing)}"
        )
    env = {"DEBIAN_FRONTEND": "noninteractive"}
    session.run(*prefix, "apt-get", "update", external=True, env=env)
    session.run(
        *prefix, "apt-get", "install", "-y", "--no-install-recommends", *missing, external=True, env=env
    )


def _ensure_gl_packages(session: nox.Session) -> None:
    """The EGL/Mesa packages for headless MuJoCo."""
    _ensure_debian_packages(session, GL_PACKAGES, "headless MuJoCo (EGL/Mesa)")


def _ensure_slurm_packages(session: nox.Session) -> None:
    """SLURM and munge: the study tests bring up a single-node SLURM (tests/slurm_cluster.py)."""
    _ensure_debian_packages(session, SLURM_PACKAGES, "the SLURM tests (a single-node SLURM)")


def _setup(session: nox.Session, extras: str = "") -> None:
    """Shared set-up: GL packages, headless rendering env, torch first, then the project."""
    _ensure_gl_packages(session)
    session.env["MUJOCO_GL"] = "egl"
    session.env["PYOPENGL_PLATFORM"] = "egl"
    if TORCH_INDEX_URL:
        session.install(TORCH, "--index-url", TORCH_INDEX_URL)
    else:
        session.install(TORCH)
    session.install("-e", f".[{extras}]" if extras else ".")


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """Default test selection (pyproject's addopts deselect `slow`); posargs go to pytest."""
    _setup(session, extras="test")
    _ensure_slurm_packages(session)
    session.run("pytest", *session.posargs)


@nox.session(python=PYTHON)
def slow(session: nox.Session) -> None:
    """Only the tests marked `slow` (minutes); posargs go to pytest."""
    _setup(session, extras="test")
    _ensure_slurm_packages(session)
    session.run("pytest", "-m", "slow", *session.posargs)


@nox.session(python=PYTHON)
def slow_ci(session: nox.Session) -> None:
    """The slow tests that alone cover a behaviour no default test does (marked ``covers_alone``)."""
    _setup(session, extras="test")
    session.run("pytest", "-m", "slow and covers_alone", *session.posargs)


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """ruff check and ruff format --check; mypy on src/ and the tests' fakes (every object against the
    contracts it is handed as); lint-imports (the package layers of docs/architecture.md)."""
    # No GL packages: nothing here renders. The project goes in because mypy reads torch's and Lightning's
    # types (a base class it cannot see would hide every missing attribute of its subclasses).
    if TORCH_INDEX_URL:
        session.install(TORCH, "--index-url", TORCH_INDEX_URL)
    else:
        session.install(TORCH)
    session.install("-e", ".[lint]")
    session.run("ruff", "check", *LINT_PATHS)
    session.run("ruff", "format", "--check", *LINT_PATHS)
    session.run("mypy")  # files and settings: [tool.mypy] in pyproject.toml
    session.run("lint-imports")  # contracts: [tool.importlinter] in pyproject.toml


@nox.session(python=PYTHON)
def fit(session: nox.Session) -> None:
    """Train: `hwm fit` with posargs, default `--config conf/dmc_cheetah.yaml`."""
    _setup(session)
    session.run("hwm", "fit", *(session.posargs or ["--config", "conf/dmc_cheetah.yaml"]))
