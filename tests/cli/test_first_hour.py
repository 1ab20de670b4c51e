"""What a new user meets first: instant help and version, one-line errors for bad files and unwritable folders,
distinct run names, the end-of-run summary, resuming only the run the config describes."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

from helpers import TINY_CONFIG, LoggedRun, cli_env
from hwm.cli.preflight import PreflightError, check_config_files, check_writable
from hwm.cli.run_match import OtherRunError, check_same_run, same_value
from hwm.cli.summary import budget_notice
from hwm.experiments.tracking import DEFAULT_URI, default_run_name


def _hwm(args: list[str], cwd: Path, probe_lightning: bool = False) -> subprocess.CompletedProcess:
    """`hwm ARGS` in a fresh interpreter; with ``probe_lightning`` the last stdout line says whether the
    command imported Lightning or TorchRL."""
    code = "import sys; from hwm.cli.main import main; code = main(sys.argv[1:]); "
    if probe_lightning:
        code += "print('heavy:', sorted(m for m in ('lightning', 'torchrl') if m in sys.modules)); "
    code += "sys.exit(code)"
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=cwd,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_command_line_module_imports_no_training_stack() -> None:
    code = (
        "import sys, hwm.cli.main, hwm.experiments.compare, hwm.experiments.study; "
        "print(sorted(m for m in ('lightning', 'torchrl', 'torch', 'mlflow') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=cli_env(), capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_version_and_help_need_no_training_stack(tmp_path: Path) -> None:
    import hwm

    version = _hwm(["--version"], tmp_path, probe_lightning=True)
    assert version.returncode == 0 and version.stdout.splitlines() == [f"hwm {hwm.__version__}", "heavy: []"]
    usage = _hwm(["--help"], tmp_path, probe_lightning=True)
    assert usage.returncode == 0 and "compare" in usage.stdout and usage.stdout.endswith("heavy: []\n")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("model: [1, 2\n", "is not valid YAML (line 2, column 1)"),
        ("This is one sentence.\n", "must hold a mapping of keys"),
        ("- a\n- b\n", "it holds a list"),
    ],
)
def test_a_bad_config_file_is_one_line_exit_2_before_lightning(
    tmp_path: Path, text: str, message: str
) -> None:
    (tmp_path / "my.yaml").write_text(text)
    proc = _hwm(["fit", "--config", "my.yaml"], tmp_path, probe_lightning=True)
    assert proc.returncode == 2
    assert proc.stderr.startswith("hwm fit: error: config file 'my.yaml' ") and message in proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert proc.stdout == "heavy: []\n"  # the error came before Lightning or TorchRL was imported
    assert not (tmp_path / "mlflow.db").exists()


def test_check_config_files_accepts_a_good_or_empty_file(tmp_path: Path) -> None:
    (tmp_path / "empty.yaml").write_text("")
    check_config_files(["--config", str(TINY_CONFIG), f"--config={tmp_path / 'empty.yaml'}"])
    with pytest.raises(PreflightError, match="does not exist"):
        check_config_files(["--config", str(tmp_path / "nope.yaml")])


def _read_only_folder() -> Path | None:
    """A folder this process cannot create files in: a 0o555 folder, or /sys for root (which ignores modes)."""
    if os.geteuid() != 0:
        folder = Path(tempfile.mkdtemp())
        folder.chmod(0o555)
        return folder
    try:
        with tempfile.TemporaryFile(dir="/sys"):
            return None
    except OSError:
        return Path("/sys")


def test_a_read_only_working_folder_is_one_line_exit_2(monkeypatch) -> None:
    folder = _read_only_folder()
    if folder is None:
        pytest.skip("no read-only folder on this machine")
    try:
        monkeypatch.chdir(folder)
        tiny = ["--config", str(TINY_CONFIG)]
        check_writable([*tiny, "--print_config"], DEFAULT_URI)  # writes nothing: allowed
        check_writable([*tiny, "--trainer.logger", "false", "--checkpoint.dirpath", "/tmp"], DEFAULT_URI)
        with pytest.raises(PreflightError, match="cannot write checkpoints under"):
            check_writable([*tiny, "--trainer.logger", "false"], DEFAULT_URI)
        proc = subprocess.run(
            [sys.executable, "-m", "hwm.cli", "fit", "--config", str(TINY_CONFIG)],
            cwd=folder,
            env=cli_env(),
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        if folder != Path("/sys"):
            folder.chmod(0o755)
            folder.rmdir()
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.startswith("hwm fit: error: cannot write the MLflow store ")
    assert "--trainer.logger.init_args.tracking_uri" in proc.stderr and proc.stderr.count("\n") == 1


def test_fit_help_leads_with_hwms_own_options(capsys) -> None:
    from hwm.cli.main import main

    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith("usage: hwm fit --config FILE") and text.index("\n\n") < 200  # a one-line usage
    first = {key: text.index(f"--{key}") for key in ("model.base", "data.task", "checkpoint.dirpath")}
    assert max(first.values()) < text.index("--trainer.accelerator")


def test_default_run_names_are_distinct_and_readable() -> None:
    first = default_run_name("cartpole-balance", "rectified", 0, when=1_000_000_000)
    again = default_run_name("cartpole-balance", "rectified", 0, when=1_000_000_001)
    assert re.fullmatch(r"cartpole-balance-rectified-s0-\d{8}-\d{6}", first) and first != again
    assert default_run_name(None, "off", True, when=0).startswith("off-")  # seed True: a random seed


def test_a_tiny_run_is_named_for_its_task_mode_and_seed_and_ends_with_a_summary(tiny_run: LoggedRun) -> None:
    assert re.fullmatch(r"cartpole-balance-rectified-s0-\d{8}-\d{6}", tiny_run.run.info.run_name)
    err = tiny_run.proc.stderr
    summary = err[err.index("hwm: run finished:") :]
    assert f"MLflow run   {tiny_run.run_id} in experiment 'hwm-tiny'" in summary
    final = tiny_run.history("eval/return")[-1][1]
    best = max(v for _, v in tiny_run.history("eval/return"))
    assert f"eval/return  final {final:.2f}, best {best:.2f}" in summary
    assert f"checkpoint   checkpoints/{tiny_run.run_id}/last.ckpt" in summary
    assert f"hwm fit --ckpt_path checkpoints/{tiny_run.run_id} --data.total_frames N" in summary
    assert "hwm compare --experiment hwm-tiny --tracking-uri sqlite:///mlflow.db" in summary
    # The bar's last redraw shows the final evaluation, not the one before it.
    assert tiny_run.proc.stdout.rstrip().endswith(f"eval={final:.1f}]")
    # The bar opens after the prefill: the prefill notice is not printed into it.
    assert "prefilling" not in tiny_run.proc.stdout


def test_the_experiment_opens_on_training_runs_in_mlflows_ui(tiny_run: LoggedRun) -> None:
    experiment = tiny_run.client.get_experiment(tiny_run.run.info.experiment_id)
    assert experiment.tags.get("mlflow.experimentKind") == "custom_model_development"


def test_resume_last_refuses_a_run_of_another_experiment(tiny_run: LoggedRun, tmp_path: Path) -> None:
    run_dir = tiny_run.workdir / "checkpoints" / tiny_run.run_id
    mine = tmp_path / "mine.yaml"
    mine.write_text(yaml.safe_dump({"trainer": {"logger": {"init_args": {"experiment_name": "mine"}}}}))
    before = sorted(p.name for p in run_dir.iterdir())
    proc = _hwm(
        ["fit", "--config", str(TINY_CONFIG), "--config", str(mine), "--ckpt_path", "last"], tiny_run.workdir
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    err = proc.stderr.strip()
    assert err.startswith("hwm fit: error: --ckpt_path last: no run under 'checkpoints' is of task ")
    assert f"the newest, 'checkpoints/{tiny_run.run_id}/last.ckpt', is of experiment 'hwm-tiny'" in err
    assert "(the config says 'mine')" in err and "\n" not in err
    assert sorted(p.name for p in run_dir.iterdir()) == before  # nothing written


def test_run_identity_and_values_compare_as_values(tmp_path: Path) -> None:
    assert same_value("1e-4", 0.0001) and same_value(3, 3.0) and not same_value("1e-4", 0.001)
    assert not same_value(True, 1) and not same_value("abc", 0.0)
    saved = {
        "data": {"task": "cartpole-balance"},
        "trainer": {"logger": {"init_args": {"experiment_name": "e"}}},
    }
    mine = tmp_path / "mine.yaml"
    mine.write_text("data:\n  task: cartpole-balance\n  model_lr: 1e-4\n")
    check_same_run(["--config", str(mine)], saved, tmp_path / "x.ckpt", picked_as_last=True)
    walker = tmp_path / "walker.yaml"
    walker.write_text("data:\n  task: walker-walk\n")
    with pytest.raises(OtherRunError, match="task 'cartpole-balance' \\(the config says 'walker-walk'\\)"):
        check_same_run(
            ["--config", str(mine), "--config", str(walker)], saved, tmp_path / "x.ckpt", picked_as_last=True
        )
    with pytest.raises(OtherRunError, match="another experiment 'e' \\(the config says 'f'\\)"):
        check_same_run(
            ["--trainer.logger.init_args.experiment_name", "f"],
            saved,
            tmp_path / "x.ckpt",
            picked_as_last=False,
        )


def test_shadowed_values_compare_as_numbers_not_spellings(tmp_path: Path) -> None:
    from hwm.cli.resume import _shadowed

    config = tmp_path / "c.yaml"
    config.write_text("model:\n  model_lr: 1e-4\n  actor_lr: 8e-5\n")  # strings to YAML 1.1
    saved = {"model": {"model_lr": 0.0001, "actor_lr": 0.0002}}
    assert _shadowed([config], [], saved) == [("model.actor_lr", "8e-5", 0.0002)]


def test_a_budget_below_the_prefill_is_reported() -> None:
    line = budget_notice(total_frames=100, prefill_frames=160)
    assert line is not None and "never trains" in line and "100" in line and "160" in line
    assert budget_notice(total_frames=400, prefill_frames=160) is None
    assert budget_notice(total_frames=100, prefill_frames=160, frames_done=120) is None  # a resume
