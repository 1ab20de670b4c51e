"""Side-by-side speed benchmark: hwm against SheepRL 0.8.4 (DreamerV3-XS, DMC walker-walk from 64x64 pixels).

    python benchmarks/sheeprl_compare.py [--updates 20] [--warmup 3] [--prefill-steps 256] [--threads 2]
                                         [--num-envs 1] [--accelerator cpu|gpu]
                                         [--venv ~/.cache/hwm-bench/sheeprl-venv] [--out benchmarks/results/sheeprl]

Both systems run on this machine in one invocation, one after the other (never concurrently), each in its own
process with ``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS`` and ``torch.set_num_threads`` set to ``--threads``, with
the same base (DreamerV3), model size (XS: GRU 256, CNN depth 24, MLPs 1 x 256, 32 x 32 latents), batch x
sequence length (16 x 64), env (DMC walker-walk, 64x64 pixels, action repeat 2), the number of envs
(``--num-envs N``: SheepRL ``env.num_envs=N``, hwm ``data.num_envs=N``; with N > 1 both step them in worker
processes: SheepRL's ``env.sync_env=False`` (gymnasium's AsyncVectorEnv), hwm's TorchRL ParallelEnv), the
device (``--accelerator``: both on the CPU, or both on the same GPU), replay/train ratio
(0.5 updates per agent step of any env: SheepRL ``algo.replay_ratio=0.5`` = hwm ``data.train_ratio=512`` with
16 x 64),
precision (``--precision``: both ``32-true`` or both ``bf16-mixed``), and a short prefill of random actions (``--prefill-steps`` agent steps) before
``--warmup + --updates`` gradient updates. The first ``--warmup`` updates are not measured.

SheepRL is not a project dependency: it lives in its own virtual environment (``--venv``), created on first use
with PyPI packages only, all pinned: ``benchmarks/sheeprl_requirements.txt`` lists every package of the venv
(``torch==2.13.0``, ``sheeprl[dmc]==0.8.4``'s dependencies, ``mujoco==3.17.0`` with the ``dm_control`` 1.0.50
that works with it) and is installed with one ``pip install -r``. Left to its resolver, ``sheeprl[dmc]`` takes
the newest ``dm_control`` (1.0.52 wants mujoco >= 4.0.1) and mujoco 4, under which dm_control's suite fails to
load (``'MjModel' object has no attribute 'flex_vertedge'``). An existing venv is used when it holds exactly
these versions (a local torch build such as ``+cpu`` counts as 2.13.0) and renders a walker-walk frame.

How each side is measured
- SheepRL is driven through its own hydra CLI (``sheeprl.cli.run`` with ``exp=dreamer_v3_dmc_walker_walk
  algo=dreamer_v3_XS ...`` overrides; see ``sheeprl_overrides``), inside a small launcher run by the venv's
  Python that wraps, before the run starts, three names of SheepRL's DreamerV3 module without changing what
  they do: ``train`` (one gradient update: world model, imagination, actor and critic) is timed call by call;
  its own phase timer (``sheeprl.utils.timer.timer``, which times ``Time/env_interaction_time`` once per
  iteration: policy forward, replay insertion and the env step with its action repeat) records each phase
  instead of only their sum; ``build_agent`` reports the parameter counts. Tensorboard logging is left on but
  flushes once (``metric.log_every`` past the end); video, checkpoints, the test episode and the model
  manager are off; the replay buffer is in memory (``buffer.memmap=False``).
- hwm is measured by ``benchmarks/throughput.py`` (same config machinery as ``hwm fit``; MLflow, checkpoints,
  evaluation and the progress bar off) with ``conf/dmc_cheetah_v3.yaml`` and the overrides in
  ``hwm_overrides``; parameter counts come from building the same agent in a separate process.

Reported per system (one JSON line each, then one with the ratios hwm / SheepRL, and a table):
- ``s_per_update``: median wall time from the end of one measured update to the end of the next: the
  update plus whatever runs between two updates (collection of two agent steps, replay sampling, logging).
  This is ``throughput.py``'s own definition; SheepRL's is computed the same way from the ``train`` end times.
- ``update_s``: the update alone. SheepRL: median of its ``train`` call durations. hwm: the mean of its
  ``world_model`` + ``actor_critic`` timer sections (``split_ms``; throughput.py reports means there).
- ``env_frames_per_s``: env frames (agent steps x action repeat) per second of collection time, acting
  policy included, over the measured part (after the warm-up updates); ``prefill_env_frames_per_s`` (SheepRL
  only) is the same with random actions during the prefill.
- ``profile``: each system's last warm-up update run under torch.profiler: ``dense_s`` (seconds in matmul
  and convolution kernels, forward and backward: what the same model at the same precision costs whoever
  implements it), ``dense_share`` of that update's wall time, and the top operators.
- ``peak_rss_mb``: the peak resident set size of the system's process (``os.wait4`` rusage of the child).
- ``params`` (trainable: world model, actor, critic) and ``params_total`` (with SheepRL's target critic /
  hwm's slow critic and any other non-trained parameters).

Rendering differs by design and is part of what is compared: SheepRL's DMC wrapper renders a frame on every
physics step it takes, so with action repeat 2 it renders twice per agent step at MuJoCo's default quality;
hwm renders once per agent step with its ``fast_render`` offscreen settings (the default of ``data``).
This benchmark never runs in the test suite.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_VENV = Path.home() / ".cache" / "hwm-bench" / "sheeprl-venv"
REQUIREMENTS = Path(__file__).with_name("sheeprl_requirements.txt")
SHEEPRL_VERSION = "0.8.4"
BATCH, SEQ, ACTION_REPEAT = 16, 64, 2
MEDIAN_KEYS = (
    "s_per_update",
    "updates_per_s",
    "update_s",
    "env_frames_per_s",
    "prefill_env_frames_per_s",
    "peak_rss_mb",
    "wall_s",
    "cpu_s",
)
IDLE_WAIT_S = 180.0  # at most this long for a quiet machine before each run (see wait_for_idle)
UPDATES_PER_STEP = 0.5  # SheepRL replay_ratio; hwm train_ratio = 0.5 * 16 * 64 = 512

# Runs inside the SheepRL venv: argv[1] is the JSON file to write, the rest are hydra overrides.
LAUNCHER = textwrap.dedent(
    """
    import atexit, json, os, sys, time
    import torch
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    import sheeprl.algos.dreamer_v3.dreamer_v3 as dv3
    from sheeprl.utils.timer import timer

    out, overrides = sys.argv[1], sys.argv[2:]
    rec = {"train": [], "phases": [], "params": {}, "threads": None}

    # The call to profile (the last warm-up update): its end is stamped after the profiler has stopped,
    # so the teardown falls in no measured update.
    profile_call = int(os.environ.get("HWM_PROFILE_CALL", "-1"))
    original_train = dv3.train
    def train(*args, **kwargs):
        prof = None
        if len(rec["train"]) == profile_call:
            prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
            prof.__enter__()
        start = time.perf_counter()
        result = original_train(*args, **kwargs)
        if prof is not None:
            rec["profile_wall_s"] = time.perf_counter() - start
            prof.__exit__(None, None, None)
            rec["profile_self_s"] = {e.key: e.self_cpu_time_total / 1e6 for e in prof.key_averages()}
        rec["train"].append([start, time.perf_counter()])
        rec["threads"] = torch.get_num_threads()
        return result
    dv3.train = train

    original_build = dv3.build_agent
    def build_agent(*args, **kwargs):
        world_model, actor, critic, target_critic, player = original_build(*args, **kwargs)
        for name, module in [("world_model", world_model), ("actor", actor), ("critic", critic),
                             ("target_critic", target_critic)]:
            rec["params"][name] = sum(p.numel() for p in module.parameters())
        return world_model, actor, critic, target_critic, player
    dv3.build_agent = build_agent

    original_stop = timer.stop
    def stop(self):
        elapsed = original_stop(self)
        rec["phases"].append([self.name, time.perf_counter(), elapsed])
        return elapsed
    timer.stop = stop

    def dump():
        with open(out, "w") as f:
            json.dump(rec, f)
    atexit.register(dump)

    from sheeprl.cli import run
    sys.argv = ["sheeprl", *overrides]
    run()
    """
)

# Prints the agent's parameter counts for the hwm config given as argv (built as `hwm fit` builds it).
HWM_PARAMS = textwrap.dedent(
    """
    import json, sys
    from hwm.cli.fit import build_cli
    agent = build_cli([*sys.argv[1:], "--trainer.logger", "false"]).model
    params = list(agent.parameters())
    print(json.dumps({"params": sum(p.numel() for p in params if p.requires_grad),
                      "params_total": sum(p.numel() for p in params)}))
    """
)


def run_logged(
    cmd: list[str],
    log: Path,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    idle_wait: float = IDLE_WAIT_S,
) -> tuple[int, dict[str, Any]]:
    """Runs cmd with its output in log; returns its exit code and what the machine saw of it: wall time,
    peak RSS, CPU seconds (user + system) and the 1-minute load average before and after (other users'
    work on a shared machine shows up there, and as wall time well above CPU time / threads)."""
    waited = wait_for_idle(idle_wait)
    load_before = os.getloadavg()[0]
    busy_before = machine_busy_s()
    start = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=cwd)
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    cpu = usage.ru_utime + usage.ru_stime
    others = machine_busy_s() - busy_before - cpu
    return os.waitstatus_to_exitcode(status), {
        "peak_rss_mb": usage.ru_maxrss / 1024,
        "wall_s": wall,
        "cpu_s": cpu,
        # CPU seconds other processes took while this one ran, as a share of all the cores' time: the
        # contention on a shared machine (0 = alone)
        "others_cpu_share": max(others, 0.0) / (wall * (os.cpu_count() or 1)),
        "load_1min": [load_before, os.getloadavg()[0]],
        "idle_wait_s": waited,
    }


def machine_busy_s() -> float:
    """CPU seconds all processes have been busy since boot, summed over cores (/proc/stat)."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal ...: all but idle and iowait
    return (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def wait_for_idle(max_wait: float, busy_below: float = 0.25, sample: float = 5.0) -> float:
    """Waits (at most max_wait seconds) until other processes keep less than busy_below of the cores busy,
    so that a run starts on a quiet machine when there is one; returns the seconds waited."""
    start = time.perf_counter()
    while True:
        before = machine_busy_s()
        time.sleep(sample)
        share = (machine_busy_s() - before) / (sample * (os.cpu_count() or 1))
        waited = time.perf_counter() - start
        if share < busy_below or waited >= max_wait:
            return waited


def pinned(requirements: Path = REQUIREMENTS) -> dict[str, str]:
    """``name: version`` of every ``name==version`` line of a requirements file (names normalised)."""
    pins = {}
    for line in requirements.read_text().splitlines():
        name, sep, version = line.split("#", 1)[0].strip().partition("==")
        if sep:
            pins[normalise(name)] = version.strip()
    return pins


def normalise(name: str) -> str:
    """A distribution's name as PEP 503 compares them: ``PyYAML``, ``pyyaml`` and ``py_yaml`` alike."""
    return "-".join(name.replace("_", "-").replace(".", "-").lower().split("-"))


def mismatches(installed: dict[str, str], pins: dict[str, str]) -> list[str]:
    """The pins an environment does not meet (a local build tag, ``2.13.0+cpu``, meets ``2.13.0``)."""
    have = {normalise(k): v for k, v in installed.items()}
    return [
        f"{name}=={want} (found {have.get(name, 'none')})"
        for name, want in sorted(pins.items())
        if have.get(name, "").split("+")[0] != want
    ]


def venv_ok(python: Path) -> bool:
    """The venv holds every pinned version and its dm_control renders a walker-walk frame."""
    if not python.exists():
        return False
    listing = (
        "import importlib.metadata as m, json; "
        "print(json.dumps({d.metadata['Name']: d.version for d in m.distributions()}))"
    )
    found = subprocess.run([python, "-c", listing], capture_output=True, text=True)
    if found.returncode != 0 or mismatches(json.loads(found.stdout), pinned()):
        return False
    render = "from dm_control import suite; suite.load('walker', 'walk').physics.render(64, 64, camera_id=0)"
    env = {**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")}
    return subprocess.run([python, "-c", render], env=env, capture_output=True).returncode == 0


def ensure_venv(venv: Path) -> Path:
    """Creates the SheepRL venv if missing or not as pinned (PyPI only); returns its Python."""
    python = venv / "bin" / "python"
    if venv_ok(python):
        return python
    print(f"creating the SheepRL venv in {venv} (a few minutes)", file=sys.stderr)
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", venv], check=True)
    # One resolve of the whole pinned set: installed one after another, a later step can break an earlier one.
    subprocess.run([python, "-m", "pip", "install", "--quiet", "-r", REQUIREMENTS], check=True)
    if not venv_ok(python):
        sys.exit(
            f"sheeprl_compare: error: the venv in {venv} does not hold {REQUIREMENTS.name}'s versions or "
            "its dm_control cannot render walker-walk"
        )
    return python


def child_env(threads: int, **extra: str) -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), **extra}
    env.setdefault("MUJOCO_GL", "egl")
    return env


def sheeprl_overrides(
    prefill_steps: int,
    updates: int,
    warmup: int,
    threads: int,
    seed: int,
    precision: str = "32-true",
    num_envs: int = 1,
    accelerator: str = "cpu",
) -> list[str]:
    # Policy steps count every env (SheepRL's and hwm's budgets alike).
    total_steps = prefill_steps + int((warmup + updates) / UPDATES_PER_STEP) + 4 * num_envs
    return [
        "exp=dreamer_v3_dmc_walker_walk",
        "algo=dreamer_v3_XS",
        f"seed={seed}",
        f"num_threads={threads}",
        f"fabric.accelerator={'cuda' if accelerator == 'gpu' else 'cpu'}",
        "fabric.devices=1",
        f"fabric.precision={precision}",
        f"env.num_envs={num_envs}",
        f"env.sync_env={num_envs == 1}",
        "env.capture_video=False",
        f"env.action_repeat={ACTION_REPEAT}",
        "env.screen_size=64",
        f"algo.per_rank_batch_size={BATCH}",
        f"algo.per_rank_sequence_length={SEQ}",
        f"algo.replay_ratio={UPDATES_PER_STEP}",
        f"algo.learning_starts={prefill_steps}",
        f"algo.total_steps={total_steps}",
        "algo.run_test=False",
        f"buffer.size={total_steps + 100}",
        "buffer.memmap=False",
        "buffer.checkpoint=False",
        "checkpoint.every=0",
        "checkpoint.save_last=False",
        f"metric.log_every={10 * total_steps}",
        "model_manager.disabled=True",
    ]


def hwm_overrides(
    prefill_steps: int,
    seed: int,
    render: str = "fast",
    precision: str = "32-true",
    compile: bool = False,
    num_envs: int = 1,
    accelerator: str = "cpu",
) -> list[str]:
    return [
        "--config",
        "conf/dmc_cheetah_v3.yaml",
        "--seed_everything",
        str(seed),
        "--trainer.accelerator",
        accelerator,
        "--trainer.devices",
        "1",
        "--data.num_envs",
        str(num_envs),
        "--trainer.precision",
        precision,
        "--model.size",
        "XS",
        "--data.task",
        "walker-walk",
        "--data.action_repeat",
        str(ACTION_REPEAT),
        "--data.image_size",
        "64",
        "--data.batch_size",
        str(BATCH),
        "--data.seq_len",
        str(SEQ),
        "--data.train_ratio",
        str(int(UPDATES_PER_STEP * BATCH * SEQ)),
        "--data.prefill_frames",
        str(prefill_steps * ACTION_REPEAT),
        "--data.capacity",
        "100000",
        "--data.fast_render",
        str(render == "fast").lower(),
        "--model.compile",
        str(compile).lower(),
    ]


def summarize_sheeprl(rec: dict[str, Any], warmup: int, num_envs: int = 1) -> dict[str, Any]:
    """Turns the launcher's raw records into the reported figures (pure: unit-tested). One env interaction
    phase steps every env once: ``num_envs`` agent steps."""
    train = rec["train"]
    if warmup < 1 or len(train) < warmup + 2:
        raise ValueError(
            f"SheepRL ran {len(train)} updates, fewer than the {warmup + 2} needed (warmup >= 1)"
        )
    measured = train[warmup:]
    durations = [end - start for start, end in measured]
    ends = [end for _, end in train]
    # As throughput.py: each measured update's wall time runs from the end of the update before it.
    measured_from = ends[warmup - 1]
    gaps = [b - a for a, b in itertools.pairwise(ends[warmup - 1 :])]
    env_phases = [(t, e) for name, t, e in rec["phases"] if name == "Time/env_interaction_time"]
    first_train = train[0][0]
    prefill = [e for t, e in env_phases if t <= first_train]
    acting = [e for t, e in env_phases if t > measured_from]
    params = rec["params"]
    trainable = sum(params.get(k, 0) for k in ("world_model", "actor", "critic"))
    profile = None
    if rec.get("profile_self_s"):
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from throughput import summarize_ops

        profile = summarize_ops(rec["profile_self_s"], rec["profile_wall_s"])
    return {
        "updates": len(measured),
        "s_per_update": statistics.median(gaps),
        "updates_per_s": len(gaps) / (ends[-1] - measured_from),
        "update_s": statistics.median(durations),
        "env_frames_per_s": ACTION_REPEAT * num_envs * len(acting) / sum(acting) if acting else None,
        "prefill_env_frames_per_s": (
            ACTION_REPEAT * num_envs * len(prefill) / sum(prefill) if prefill else None
        ),
        "params": trainable,
        "params_total": trainable + params.get("target_critic", 0),
        "params_by_module": params,
        "threads": rec["threads"],
        **({"profile": profile} if profile else {}),
    }


def run_sheeprl(python: Path, args: argparse.Namespace, work: Path, suffix: str = "") -> dict[str, Any]:
    launcher = work / "sheeprl_launcher.py"
    launcher.write_text(LAUNCHER)
    raw = work / "sheeprl_records.json"
    overrides = sheeprl_overrides(
        args.prefill_steps, args.updates, args.warmup, args.threads, args.seed, args.precision,
        args.num_envs, args.accelerator,
    )  # fmt: skip
    log = work / "sheeprl.log"
    env = child_env(args.threads, HWM_PROFILE_CALL=str(args.warmup - 1))
    rc, usage = run_logged([str(python), str(launcher), str(raw), *overrides], log, env, work, args.idle_wait)
    if rc != 0 or not raw.exists():
        sys.exit(f"sheeprl_compare: error: SheepRL exited with {rc}; see {log}:\n{log.read_text()[-3000:]}")
    rec = json.loads(raw.read_text())
    (args.out / f"sheeprl_records{suffix}.json").write_text(json.dumps(rec))
    return {
        "system": "sheeprl",
        "version": SHEEPRL_VERSION,
        **summarize_sheeprl(rec, args.warmup, args.num_envs),
        "num_envs": args.num_envs,
        "accelerator": args.accelerator,
        **usage,
        "command": ["sheeprl", *overrides],
        "rendering": "every physics step (2 per agent step), MuJoCo default offscreen settings",
    }


def run_hwm(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    overrides = hwm_overrides(
        args.prefill_steps, args.seed, args.hwm_render, args.precision, args.hwm_compile,
        args.num_envs, args.accelerator,
    )  # fmt: skip
    env = child_env(
        args.threads, PYTHONPATH=os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])
    )
    counts = subprocess.run(
        [sys.executable, "-c", HWM_PARAMS, *overrides], env=env, cwd=ROOT, capture_output=True, text=True
    )
    if counts.returncode != 0:
        sys.exit(f"sheeprl_compare: error: building the hwm agent failed:\n{counts.stderr[-3000:]}")
    params = json.loads(counts.stdout.strip().splitlines()[-1])
    cmd = [
        sys.executable,
        str(ROOT / "benchmarks" / "throughput.py"),
        *overrides,
        "--updates",
        str(args.updates),
        "--warmup",
        str(args.warmup),
        "--threads",
        str(args.threads),
        "--profile",
    ]
    log = work / "hwm.log"
    rc, usage = run_logged(cmd, log, env, ROOT, args.idle_wait)
    lines = [line for line in log.read_text().splitlines() if line.startswith("{")]
    if rc != 0 or not lines:
        sys.exit(
            f"sheeprl_compare: error: throughput.py exited with {rc}; see {log}:\n{log.read_text()[-3000:]}"
        )
    result = json.loads(lines[-1])
    split = result.get("split_ms", {})
    return {
        "system": "hwm",
        "updates": result["updates"],
        "s_per_update": result["s_per_update"],
        "updates_per_s": result["updates_per_s"],
        "update_s": (split.get("world_model", 0.0) + split.get("actor_critic", 0.0)) / 1000,
        "env_frames_per_s": result["env_frames_per_s"],
        "prefill_env_frames_per_s": None,
        **params,
        "threads": result["threads"],
        "split_ms": split,
        **({"profile": result["profile"]} if "profile" in result else {}),
        **usage,
        "command": ["python", "benchmarks/throughput.py", *cmd[2:]],
        "rendering": f"once per agent step, {args.hwm_render} offscreen settings",
        "compile": args.hwm_compile,
        "num_envs": args.num_envs,
        "accelerator": args.accelerator,
        "device": result.get("device"),
    }


def ratios(hwm: dict[str, Any], sheeprl: dict[str, Any]) -> dict[str, Any]:
    """hwm / SheepRL for rates (higher is better for hwm), SheepRL / hwm for times."""

    def div(a: float | None, b: float | None) -> float | None:
        return a / b if a and b else None

    return {
        "system": "ratio hwm/sheeprl",
        "update_rate": div(sheeprl["s_per_update"], hwm["s_per_update"]),
        "update_rate_update_only": div(sheeprl["update_s"], hwm["update_s"]),
        "env_frames_per_s": div(hwm["env_frames_per_s"], sheeprl["env_frames_per_s"]),
        "peak_rss": div(hwm["peak_rss_mb"], sheeprl["peak_rss_mb"]),
        "params": div(hwm["params"], sheeprl["params"]),
        "goal_update_rate_2x": bool((div(sheeprl["s_per_update"], hwm["s_per_update"]) or 0) >= 2),
        "goal_env_frames_5x": bool((div(hwm["env_frames_per_s"], sheeprl["env_frames_per_s"]) or 0) >= 5),
    }


def table(rows: list[dict[str, Any]], ratio: dict[str, Any]) -> str:
    def fmt(v: Any, spec: str) -> str:
        return "-" if v is None else format(v, spec)

    lines = [
        "| system | s/update (wall) | update only (s) | env frames/s | peak RSS (MB) | params |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['system']} | {fmt(r['s_per_update'], '.3f')} | {fmt(r['update_s'], '.3f')} | "
            f"{fmt(r['env_frames_per_s'], '.1f')} | {fmt(r['peak_rss_mb'], '.0f')} | {r['params'] / 1e6:.2f}M |"
        )
    lines.append(
        f"| hwm/SheepRL | {fmt(ratio['update_rate'], '.2f')}x rate | {fmt(ratio['update_rate_update_only'], '.2f')}x"
        f" rate | {fmt(ratio['env_frames_per_s'], '.2f')}x | {fmt(ratio['peak_rss'], '.2f')}x | "
        f"{fmt(ratio['params'], '.2f')}x |"
    )
    return "\n".join(lines)


def median_row(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One system's repeats folded into one row: the median of each figure (pure: unit-tested)."""
    row = {**runs[-1], "repeats": len(runs)}
    for key in MEDIAN_KEYS:
        values = [r[key] for r in runs if r.get(key) is not None]
        row[key] = statistics.median(values) if values else None
    row["per_repeat"] = {key: [r.get(key) for r in runs] for key in MEDIAN_KEYS}
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--venv", type=Path, default=DEFAULT_VENV, help="SheepRL's virtual environment")
    parser.add_argument("--updates", type=int, default=20, help="measured gradient updates per system")
    parser.add_argument("--warmup", type=int, default=3, help="updates before measuring")
    parser.add_argument("--prefill-steps", type=int, default=256, help="random-action agent steps first")
    parser.add_argument("--threads", type=int, default=2, help="torch / OpenMP threads of both systems")
    parser.add_argument(
        "--repeats", type=int, default=1, help="SheepRL/hwm pairs, alternating; medians reported"
    )
    parser.add_argument(
        "--hwm-render", choices=["fast", "default"], default="fast", help="hwm's data.fast_render"
    )
    parser.add_argument(
        "--hwm-compile",
        action="store_true",
        help="hwm's model.compile (torch.compile; its compile time falls in the warm-up updates)",
    )
    parser.add_argument(
        "--precision",
        choices=["32-true", "bf16-mixed"],
        default="32-true",
        help="both systems' Lightning precision (SheepRL fabric.precision, hwm trainer.precision)",
    )
    parser.add_argument(
        "--num-envs", type=int, default=1, help="envs per system (the same N for both; > 1: worker processes)"
    )
    parser.add_argument(
        "--accelerator", choices=["cpu", "gpu"], default="cpu", help="both systems on the CPU or one GPU"
    )
    parser.add_argument(
        "--idle-wait",
        type=float,
        default=IDLE_WAIT_S,
        help="at most this many seconds of waiting for a quiet machine before each run",
    )
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--only", choices=["sheeprl", "hwm"], help="run one system (no ratios)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "sheeprl")
    args = parser.parse_args(argv)
    if args.warmup < 1 or args.updates < 2 or args.repeats < 1 or args.num_envs < 1:
        parser.error("--warmup, --repeats and --num-envs must be >= 1 and --updates >= 2")
    if args.accelerator == "gpu":
        import torch

        if not torch.cuda.is_available():
            parser.error("--accelerator gpu: no CUDA device is visible to torch here")
    if args.prefill_steps < SEQ * args.num_envs:
        # Both systems replay each env's own stream: every env needs a whole sequence before an update.
        parser.error(f"--prefill-steps must be >= the sequence length {SEQ} x --num-envs")
    args.out.mkdir(parents=True, exist_ok=True)
    python = ensure_venv(args.venv) if args.only != "hwm" else None
    stamp = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
    }
    runs: dict[str, list[dict[str, Any]]] = {"sheeprl": [], "hwm": []}
    lines: list[str] = []
    with tempfile.TemporaryDirectory(prefix="hwm-sheeprl-") as tmp:
        work = Path(tmp)
        # One after the other, never concurrently: they share the cores.
        for repeat in range(args.repeats):
            for system in ("sheeprl", "hwm"):
                if args.only not in (None, system):
                    continue
                if system == "sheeprl":
                    assert python is not None
                    default = (args.num_envs, args.accelerator) == (1, "cpu")
                    setup = "" if default else f"_{args.accelerator}_envs{args.num_envs}"
                    row = run_sheeprl(python, args, work, suffix=f"_{args.precision}{setup}_{repeat}")
                else:
                    row = run_hwm(args, work)
                runs[system].append({**row, "repeat": repeat, **stamp})
                lines.append(json.dumps(runs[system][-1]))
                print(lines[-1], flush=True)
    rows = [median_row(r) for r in runs.values() if r]
    if args.repeats > 1:
        lines += [json.dumps({**row, "system": f"{row['system']} (median)"}) for row in rows]
    if len(rows) == 2:
        sheeprl, hwm = rows
        ratio = {**ratios(hwm, sheeprl), "repeats": args.repeats, **stamp}
        print(json.dumps(ratio))
        lines.append(json.dumps(ratio))
        print(table([sheeprl, hwm], ratio))
        if sheeprl["params"] != hwm["params"]:
            print(
                f"parameter counts differ: SheepRL {sheeprl['params']:,} vs hwm {hwm['params']:,} (trainable)"
            )
    tag = f"{args.precision}{'_compile' if args.hwm_compile else ''}"
    if args.num_envs != 1 or args.accelerator != "cpu":
        tag += f"_{args.accelerator}_envs{args.num_envs}"
    name = (
        f"results_{tag}.jsonl" if args.only is None else f"results_{args.only}_{args.hwm_render}_{tag}.jsonl"
    )
    (args.out / name).write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
