"""A real single-node SLURM for tests: munged, slurmctld and slurmd on 127.0.0.1, with their configuration,
state and logs in one scratch folder (Debian's `slurm-wlm` and `munge` packages; the nox sessions install
them). docs/cluster.md has the same steps for a machine of your own.

Jobs inherit slurmd's nice value, so a `nice -n 19 pytest` keeps the tests' jobs at low priority too.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol")


class SlurmUnavailable(Exception):
    """The daemons are missing or would not start here: the tests skip with this reason."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def slurm_conf(root: Path, cpus: int, ctld_port: int, slurmd_port: int, user: str) -> str:
    return f"""\
ClusterName=hwmtest
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser={user}
SlurmdUser={user}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={root}/munge/munge.socket
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd.log
ProctrackType=proctrack/pgid
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
MailProg=/bin/true
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
ReturnToService=2
JobRequeue=1
# Time for a run to checkpoint after the SIGTERM of a requeue or scancel (a loaded CPU is slow).
KillWait=120
InactiveLimit=0
SlurmdTimeout=300
NodeName=localhost NodeAddr=127.0.0.1 CPUs={cpus} State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
"""


class SlurmCluster:
    """The daemons of one test session; ``env`` is what a client command (sbatch, squeue) needs."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.conf = root / "slurm.conf"
        self.procs: list[subprocess.Popen] = []

    @property
    def env(self) -> dict[str, str]:
        return {"SLURM_CONF": str(self.conf)}

    def _env(self) -> dict[str, str]:
        return {**os.environ, **self.env}

    def start(self) -> None:
        missing = [d for d in DAEMONS if shutil.which(d) is None]
        if missing:
            raise SlurmUnavailable(
                f"{', '.join(missing)} not found: apt-get install slurm-wlm munge (nox -s tests installs them)"
            )
        for sub in ("munge", "state", "spool", "log"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        (self.root / "munge").chmod(0o755)  # munged insists its socket's folder be reachable
        key = self.root / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        user = subprocess.run(["id", "-un"], capture_output=True, text=True, check=True).stdout.strip()
        cpus = os.cpu_count() or 1
        self.conf.write_text(slurm_conf(self.root, cpus, _free_port(), _free_port(), user))
        munge = self.root / "munge"
        self._daemon(
            ["munged", "-F", "-f", f"--socket={munge}/munge.socket", f"--key-file={key}"]
            + [
                f"--pid-file={munge}/munged.pid",
                f"--seed-file={munge}/seed",
                f"--log-file={self.root}/log/munged.log",
            ],
            "munged",
        )
        self._wait(lambda: (munge / "munge.socket").exists(), "munged")
        self._daemon(["slurmctld", "-D", "-i", "-f", str(self.conf)], "slurmctld")
        self._daemon(["slurmd", "-D", "-N", "localhost", "-f", str(self.conf)], "slurmd")
        self._wait(self._node_idle, "slurmd to register as idle")

    def _daemon(self, cmd: list[str], name: str) -> None:
        out = open(self.root / "log" / f"{name}.out", "w")  # noqa: SIM115 - the daemon's, closed with it
        self.procs.append(
            subprocess.Popen(
                cmd, stdout=out, stderr=subprocess.STDOUT, env=self._env(), start_new_session=True
            )
        )

    def _node_idle(self) -> bool:
        proc = subprocess.run(
            ["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, env=self._env(), timeout=30
        )
        return proc.returncode == 0 and proc.stdout.strip() == "idle"

    def _wait(self, ready, what: str, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            dead = [p.args[0] for p in self.procs if p.poll() is not None]
            if dead or time.monotonic() > deadline:
                raise SlurmUnavailable(
                    f"waiting for {what}: {'exited: ' + ', '.join(dead) if dead else 'timed out'}; {self.logs()}"
                )
            time.sleep(0.5)

    def logs(self) -> str:
        tails = []
        for log in sorted((self.root / "log").glob("*")):
            text = log.read_text(errors="replace").strip().splitlines()[-5:]
            tails.append(f"{log.name}: " + " | ".join(text))
        return "; ".join(tails)

    def run(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess:
        """A client command (scontrol, squeue, scancel) against this cluster."""
        proc = subprocess.run(list(cmd), capture_output=True, text=True, env=self._env(), timeout=60)
        if check and proc.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)}: exit {proc.returncode}: {proc.stderr.strip()}")
        return proc

    def queue(self, job: str) -> dict[str, tuple[str, str]]:
        """{task id: (state, reason)} of the job's tasks still in the queue."""
        proc = self.run("squeue", "-h", "-r", "-o", "%i %T %r", "-j", job, check=False)
        out = {}
        for line in proc.stdout.splitlines():
            task, state, reason = (line.split(None, 2) + ["", ""])[:3]
            out[task] = (state, reason)
        return out

    def stop(self) -> None:
        if not self.procs:
            return
        self.run("scancel", "--partition", "debug", check=False)
        deadline = time.monotonic() + 180  # KillWait and a little: the jobs' runs checkpoint and end
        while self.run("squeue", "-h", check=False).stdout.strip() and time.monotonic() < deadline:
            time.sleep(1)
        for proc in reversed(self.procs):
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
