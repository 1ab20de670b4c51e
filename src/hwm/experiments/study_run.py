"""`hwm study`'s command line: save the study's definition, then hand it to its launcher (local processes or a
SLURM job array), or print a study's status. Apart from ``study`` (the definitions) so that the launchers,
which read those definitions, are imported only by the command that uses them."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path

from hwm.experiments.study import Study, StudyError, build, parser, save_definition


def run(study: Study) -> int:
    """Runs (or, under an existing id, continues) the study with its launcher; the exit status."""
    if not study.workdir:
        study.workdir = os.getcwd()
    try:
        if not study.dry_run:
            save_definition(study)
    except StudyError as exc:
        print(f"hwm study: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(
            f"hwm study: error: cannot write the runs' logs under {study.folder}: {exc.strerror}; "
            "run from a writable folder or pass --logs FOLDER",
            file=sys.stderr,
        )
        return 2
    if Path(study.workdir).resolve() != Path.cwd().resolve():
        # The runs' relative paths (configs, sqlite store, checkpoints) mean what they meant at the start.
        study.logs = study.logs.resolve()
        print(f"hwm study: working in {study.workdir}, where the study started", file=sys.stderr)
        os.chdir(study.workdir)
    if study.launcher == "slurm":
        from hwm.experiments.study_slurm import launch

        return launch(study)
    from hwm.experiments.study_local import launch as launch_local

    return launch_local(study)


def main(argv: Sequence[str]) -> int:
    argv = list(argv)
    try:
        ns = parser().parse_args(argv)
        if ns.status:
            from hwm.experiments.study_status import show

            return show(ns.logs, ns.status)
        study = build(argv)
    except StudyError as exc:
        print(f"hwm study: error: {exc}", file=sys.stderr)
        return 2
    return run(study)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
