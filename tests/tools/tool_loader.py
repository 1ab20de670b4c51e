"""Loads the scripts under tools/ (not a package: they run before hwm is installed) and builds a venv that
sees what a GPU node has."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

from packaging.markers import default_environment
from packaging.utils import canonicalize_name

TOOLS = Path(__file__).resolve().parents[2] / "tools"


def load_tool(name: str) -> ModuleType:
    """tools/<name>.py as a module."""
    spec = importlib.util.spec_from_file_location(f"hwm_tools_{name}", TOOLS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is created
    spec.loader.exec_module(module)
    return module


def node_like_venv(root: Path, assumed: list[str]) -> Path:
    """A fresh venv (pip from ensurepip) that sees, from this interpreter's environment, only torch, the
    ``assumed`` packages and what they require: linked into ``root/system`` and put on its path by a .pth
    file, as a node's preinstalled packages are. pip never uninstalls them (they lie outside the venv).
    Returns the venv's python."""
    wheelhouse = load_tool("wheelhouse")
    installed = {
        canonicalize_name(d.metadata["Name"]): d
        for d in importlib.metadata.distributions()
        if d.metadata["Name"]
    }
    requires = {name: list(d.requires or []) for name, d in installed.items()}
    system = root / "system"
    system.mkdir(parents=True)
    for name in wheelhouse.closure(["torch", *assumed], requires, default_environment()):
        dist = installed[name]
        tops = {Path(str(f)).parts[0] for f in dist.files or []}
        for top in sorted(tops - {"..", "__pycache__"}):
            link = system / top
            if not link.exists():
                link.symlink_to(Path(str(dist.locate_file(top))))
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    # ensurepip brings an old setuptools on 3.11 that would shadow torch's (a node's venv has none).
    subprocess.run([str(python), "-m", "pip", "uninstall", "-q", "-y", "setuptools"], check=True)
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    (Path(site) / "node_system.pth").write_text(f"{system}\n")
    return python
