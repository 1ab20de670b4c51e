"""tools/wheelhouse.py: what the GPU wheelhouse carries, and the trimmed wheels pip installs."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from tool_loader import load_tool

wh = load_tool("wheelhouse")

ENV_312 = wh.target_environment("3.12", "manylinux_2_28_x86_64")


def test_platform_tags_cover_every_older_manylinux() -> None:
    tags = wh.platform_tags("manylinux_2_28_x86_64")
    assert tags[0] == "manylinux_2_28_x86_64"
    assert {"manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux1_x86_64"} <= set(tags)
    legacy = wh.platform_tags("manylinux2014_x86_64")
    assert "manylinux_2_17_x86_64" in legacy and "manylinux_2_18_x86_64" not in legacy
    assert wh.platform_tags("macosx_11_0_arm64") == ["macosx_11_0_arm64"]


def test_closure_follows_markers_and_asked_extras() -> None:
    requires = {
        "a": ["b", 'orjson; python_version < "3.13"', 'aiohttp; extra == "http"'],
        "b": ["c[http]"],
        "c": ['aiohttp; extra == "http"', 'never; sys_platform == "win32"'],
    }
    assert wh.closure(["a"], requires, ENV_312) == {"a", "b", "c", "orjson", "aiohttp"}
    assert wh.closure(["c"], requires, ENV_312) == {"c"}
    env_313 = wh.target_environment("3.13", "manylinux_2_28_x86_64")
    assert "orjson" not in wh.closure(["a"], {**requires, "b": []}, env_313)


def test_select_leaves_out_what_the_assumed_packages_bring_and_trimmed_requirements() -> None:
    resolved = {
        "torch": {"version": "2.11.0+stub", "requires": ["filelock"]},
        "filelock": {"version": "3", "requires": []},
        "torchrl": {"version": "0.14.1", "requires": ["torch>=2.1", "numpy"]},
        "lightning": {"version": "2.6.6", "requires": ["torch", "torchmetrics"]},
        "torchmetrics": {"version": "1.9", "requires": ["numpy>1.20"]},
        "numpy": {"version": "2.5", "requires": []},
        "dm-control": {"version": "1.0.28", "requires": ["labmaze", "numpy", "lxml"]},
        "labmaze": {"version": "1.0.6", "requires": []},
        "lxml": {"version": "6", "requires": []},
    }
    roots = ["torch>=2.5", "torchrl==0.14.1", "lightning>=2.6", "dm_control==1.0.28"]
    carried, present = wh.select(roots, resolved, ["lightning"], ENV_312)
    assert carried == {"torchrl", "dm-control", "lxml"}  # numpy comes with lightning's torchmetrics
    assert present == {"torch", "filelock", "lightning", "torchmetrics", "numpy"}
    carried, _ = wh.select(roots, resolved, [], ENV_312)
    assert carried == {"torchrl", "dm-control", "lxml", "lightning", "torchmetrics", "numpy"}


def test_roots_are_pyproject_less_the_left_out() -> None:
    roots = {r.split("=")[0].split(">")[0].split("[")[0].lower() for r in wh.hwm_roots()}
    assert {"torch", "torchrl", "tensordict", "lightning", "dm_control", "mujoco"} <= roots
    assert not roots & set(wh.LEFT_OUT)
    all_deps = wh.tomllib.loads((wh.ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    named = {wh.canonicalize_name(wh.Requirement(d).name) for d in all_deps}
    assert {wh.canonicalize_name(n) for n in wh.LEFT_OUT} <= named, (
        "LEFT_OUT names a package hwm no longer needs"
    )
    assert all(Path(wh.ROOT / src).is_file() for src in wh.SELFCHECK_FILES.values())


def _fake_dm_control(directory: Path) -> Path:
    dist = "dm_control-1.0.28"
    files = {
        "dm_control/__init__.py": b"",
        "dm_control/suite/cheetah.py": b"CHEETAH = 1\n",
        "dm_control/locomotion/walker.py": b"import labmaze\n",
        "dm_control/suite/dog_assets/mesh.stl": b"\0" * 100,
        f"{dist}.dist-info/METADATA": (
            b"Metadata-Version: 2.1\nName: dm_control\nVersion: 1.0.28\n"
            b"Requires-Dist: labmaze\nRequires-Dist: numpy\nRequires-Dist: requests\n"
        ),
        f"{dist}.dist-info/WHEEL": b"Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = "".join(f"{p},sha256=x,{len(d)}\n" for p, d in files.items()) + f"{dist}.dist-info/RECORD,,\n"
    path = directory / f"{dist}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as z:
        for p, d in files.items():
            z.writestr(p, d)
        z.writestr(f"{dist}.dist-info/RECORD", record)
    return path


def test_trimmed_wheel_drops_files_and_requirements_and_pip_installs_it(tmp_path: Path) -> None:
    src = _fake_dm_control(tmp_path)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    trimmed = wh.trim_wheel(src, *wh.TRIM["dm-control"], out_dir)
    assert trimmed.name == "dm_control-1.0.28+suite-py3-none-any.whl"
    with zipfile.ZipFile(trimmed) as z:
        names = set(z.namelist())
        meta = z.read("dm_control-1.0.28+suite.dist-info/METADATA").decode()
        record = z.read("dm_control-1.0.28+suite.dist-info/RECORD").decode()
    assert "dm_control/suite/cheetah.py" in names
    assert not any("locomotion" in n or "dog_assets" in n for n in names)
    assert "Version: 1.0.28+suite" in meta and "numpy" in meta
    assert "labmaze" not in meta and "requests" not in meta
    assert {ln.split(",")[0] for ln in record.splitlines()} == names
    assert "dm_control/suite/cheetah.py,sha256=x,12" in record  # kept files keep their hashes
    # pip takes it offline, and `dm_control==1.0.28` (what hwm asks for) matches the +suite version.
    target = tmp_path / "site"
    stub = wh.stub_wheel(out_dir, "numpy", "2.0")
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "-q",
        "--no-index",
        "--no-compile",
        "--find-links",
        str(out_dir),
    ]
    proc = subprocess.run(
        [*cmd, "--target", str(target), "dm_control==1.0.28"], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    assert (target / "dm_control" / "suite" / "cheetah.py").read_text() == "CHEETAH = 1\n"
    assert not (target / "dm_control" / "locomotion").exists()
    assert stub.exists() and (target / "numpy-2.0.dist-info").is_dir()


def test_build_rejects_a_bad_python_and_a_full_out_dir(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert wh.main(["build", "--python", "3", "--out", str(tmp_path)]) == 2
    assert "expected X.Y" in capsys.readouterr().err
    (tmp_path / "old.whl").write_bytes(b"")
    assert wh.main(["build", "--python", "3.12", "--out", str(tmp_path)]) == 2
    assert "is not empty" in capsys.readouterr().err
