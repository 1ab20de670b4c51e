"""`hwm study --launcher local` (the default): the study's runs as processes of this machine, ``--jobs`` at a
time. A rerun skips finished runs and continues interrupted ones; SIGTERM or Ctrl-C stops the study after
its running runs have checkpointed, and the study ends with one line per run."""

from __future__ import annotations

import os
import shlex
import signal
import sys
import threading
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from types import FrameType
from typing import Any

from hwm.experiments.compare import DEFAULT_GROUP_BY
from hwm.experiments.study import STUDY_RUN_TAG, Slot, Study
from hwm.experiments.study_folder import latest_checkpoint, log_path, read_record
from hwm.experiments.study_slot import (
    EXIT_BAD_INPUT,
    EXIT_PREEMPTED,
    Outcome,
    ensure_experiment,
    mlflow_runs,
    run_slot,
)
from hwm.experiments.tracking import prepare_experiment


class _Stop:
    """SIGTERM / SIGINT to the study: start no further run, and have the running ones checkpoint and stop."""

    def __init__(self, study: Study) -> None:
        self.study = study
        self.event = threading.Event()
        self.running: dict[int, Slot] = {}  # by index: a Slot (its variant a dict) isn't hashable
        self.lock = threading.Lock()
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _Stop:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._on_signal)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        first = not self.event.is_set()
        self.event.set()
        if first:
            os.write(
                2,
                f"\nhwm study: {signal.Signals(signum).name}: the running runs checkpoint and stop\n".encode(),
            )
        # SIGTERM, whatever came: a Ctrl-C from the terminal reached them already, and a second SIGINT would
        # make them stop at once, without a checkpoint.
        for slot in list(self.running.values()):
            pid = read_record(self.study, slot).pid
            if pid is not None:
                try:
                    os.kill(pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass


def launch(study: Study) -> int:
    """Runs every unfinished run of the study; the exit status: 0 all finished, 1 a run failed, 2 bad
    input (a run's config), 75 stopped with runs left to resume."""
    slots = study.slots()
    n = len(slots)
    print(
        f"hwm study {study.study_id}: {n} runs ({len(study.variants())} variants x {len(study.seeds)} seeds)"
    )
    if study.dry_run:  # what a (re)run would do with each run, by its record and checkpoints
        for slot in slots:
            if read_record(study, slot).finished:
                print(f"[{slot.index}/{n}] {slot.name}: finished earlier")
                continue
            cmd = ["hwm", "fit", *study.fit_args(slot.variant, slot.seed, slot.index)]
            resume = latest_checkpoint(study, slot)
            print(
                f"[{slot.index}/{n}] {slot.name}: {shlex.join(cmd + (['--ckpt_path', str(resume)] if resume else []))}"
            )
        return 0
    prepare_experiment(study.tracking(), study.experiment_name())  # runs in parallel would race to create it
    known = _known_runs(study, slots)
    say_lock = threading.Lock()

    def say(line: str) -> None:
        with say_lock:
            print(line, flush=True)

    outcomes: dict[int, Outcome] = {}
    with _Stop(study) as stop:

        def one(slot: Slot) -> Outcome:
            label = f"[{slot.index}/{n}] {slot.name}"
            if stop.event.is_set():
                return Outcome(slot, "not run")
            resume = latest_checkpoint(study, slot)
            record = read_record(study, slot)
            if not record.finished:
                how = f"continuing from {resume}" if resume else "running"
                say(f"{label}: {how} (log: {log_path(study, slot)})")
            with stop.lock:
                stop.running[slot.index] = slot
            try:
                out = run_slot(
                    study,
                    slot,
                    say=lambda text: say(f"{label}: {text}"),
                    progress_every=study.progress_every,
                    runs=known.get(slot.key) if known is not None else None,
                )
            finally:
                with stop.lock:
                    stop.running.pop(slot.index, None)
            if out.state == "finished earlier":
                say(f"{label}: finished earlier (log: {log_path(study, slot)})")
            elif out.code == 0:
                say(f"{label}: done in {out.took:.1f} s")
            else:
                say(
                    f"{label}: {out.state} (exit {out.code}) in {out.took:.1f} s: {out.message} "
                    f"(log: {log_path(study, slot)})"
                )
                if out.code == EXIT_BAD_INPUT:  # bad config: the study stops
                    stop.event.set()
                    print(f"hwm study: error: stopping: {out.message}", file=sys.stderr)
            return out

        first = 0
        if study.jobs > 1 and not ensure_experiment(study.tracking(), study.experiment_name()):
            # Runs starting together would race to create the experiment: the first one goes alone.
            first = 1
            outcomes[slots[0].index] = one(slots[0])
        with ThreadPoolExecutor(max_workers=study.jobs) as pool:
            pending: set[Future[Outcome]] = {pool.submit(one, slot) for slot in slots[first:]}
            while pending:  # short waits: the main thread stays free to take a signal
                done, pending = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
                for future in done:
                    out = future.result()
                    outcomes[out.slot.index] = out
    return report(study, [outcomes[s.index] for s in slots])


def _known_runs(study: Study, slots: list[Slot]) -> dict[str, list[Any]] | None:
    """A rerun's MLflow runs by slot key, in one query (None: a first run, or a store that can't be read:
    each run then looks its own up, or trusts its record)."""
    if not any(read_record(study, s).attempts for s in slots):
        return {s.key: [] for s in slots}
    runs = mlflow_runs(study)
    if runs is None:
        print(
            f"hwm study: cannot read the tracking store {study.tracking()}: runs are judged by their records",
            file=sys.stderr,
        )
        return None
    out: dict[str, list[Any]] = {s.key: [] for s in slots}
    for run in runs:
        out.setdefault(run.data.tags.get(STUDY_RUN_TAG, ""), []).append(run)
    return out


def report(study: Study, outcomes: list[Outcome]) -> int:
    """One line per run, how to compare them, and the exit status."""
    n = len(outcomes)
    finished = sum(o.state in ("finished", "resumed", "finished earlier") for o in outcomes)
    print(f"hwm study {study.study_id}: {finished}/{n} runs finished")
    width = max(len(o.state) for o in outcomes)
    for o in outcomes:
        detail = f" (exit {o.code}: {o.message})" if o.code not in (0, None) else ""
        print(f"  {o.state:<{width}}  {o.slot.name}{detail}  (log: {log_path(study, o.slot)})")
    if any(o.code == EXIT_BAD_INPUT for o in outcomes):
        return EXIT_BAD_INPUT
    experiment, uri = study.experiment_name(), study.tracking()
    where = f" --experiment {experiment}" + (f" --tracking-uri {uri}" if uri else "")
    group = next((k for k in study.vary if k != "config"), DEFAULT_GROUP_BY)  # a param, not a file
    print(f"compare them: hwm compare{where} --study {study.study_id} --group-by {group}")
    failed = [o for o in outcomes if o.state == "failed"]
    left = [o for o in outcomes if o.state in ("interrupted", "not run")]
    if failed:
        print(
            f"hwm study: {len(failed)} run(s) failed: {'; '.join(o.slot.name for o in failed)}",
            file=sys.stderr,
        )
    if left or failed:
        print(f"hwm study: continue the study with: hwm study --resume {study.study_id}", file=sys.stderr)
    if failed:
        return 1
    return EXIT_PREEMPTED if left else 0
