"""A one-node Slurm cluster in a temp folder, for the Slurm sweep tests and for trying
`falstudy sweep --slurm` by hand (Debian's `slurm-wlm` and `munge`; `make slurm` installs them).

    python tests/slurm_cluster.py up /tmp/slurm     # prints the SLURM_CONF line to export
    python tests/slurm_cluster.py down /tmp/slurm

munged, slurmctld and slurmd run as root with their key, state, spool, logs and sockets under
the folder (ports picked free), so nothing in /etc is touched and the system's own munged (if
any) is left alone. The node has CPUs=2 and RealMemory sized to this machine. Clients find the
cluster through the SLURM_CONF environment variable (``Cluster.env``).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd")
PARTITION = "debug"


def missing() -> str | None:
    """Why a cluster cannot be started here, or None."""
    lacking = [b for b in ("munged", "mungekey", "slurmctld", "slurmd", "sbatch") if shutil.which(b) is None
               and not Path("/usr/sbin", b).exists()]
    if lacking:
        return f"Slurm is not installed here (no {', '.join(lacking)}; apt-get install slurm-wlm munge, or `make slurm`)"
    if os.geteuid() != 0:
        return "the one-node Slurm of the tests runs its daemons as root; run as root"
    return None


def _bin(name: str) -> str:
    return shutil.which(name) or str(Path("/usr/sbin", name))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _mem_mb() -> int:
    with open("/proc/meminfo") as fh:
        total_kb = int(next(line for line in fh if line.startswith("MemTotal")).split()[1])
    return int(total_kb / 1024 * 0.8)  # below what slurmd measures, or it drains the node


@dataclass
class Cluster:
    root: Path

    @property
    def conf(self) -> Path:
        return self.root / "slurm.conf"

    @property
    def env(self) -> dict[str, str]:
        return dict(os.environ, SLURM_CONF=str(self.conf))


def config(root: Path, node: str, cpus: int = 2) -> str:
    return "\n".join([
        "ClusterName=falstudy", f"SlurmctldHost={node}(127.0.0.1)", "SlurmUser=root", "SlurmdUser=root",
        "AuthType=auth/munge", "CredType=cred/munge", f"AuthInfo=socket={root}/munge.socket",
        f"SlurmctldPort={_free_port()}", f"SlurmdPort={_free_port()}",
        f"StateSaveLocation={root}/state", f"SlurmdSpoolDir={root}/spool",
        f"SlurmctldPidFile={root}/slurmctld.pid", f"SlurmdPidFile={root}/slurmd.pid",
        f"SlurmctldLogFile={root}/slurmctld.log", f"SlurmdLogFile={root}/slurmd.log",
        "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none",
        "SelectType=select/cons_tres", "SelectTypeParameters=CR_CPU", "SchedulerType=sched/backfill",
        "SlurmdParameters=config_overrides", "ReturnToService=2", "MpiDefault=none",
        "JobAcctGatherType=jobacct_gather/none", "AccountingStorageType=accounting_storage/none",
        "KillWait=30", "MinJobAge=3600", "InactiveLimit=0", "SlurmctldTimeout=30", "SlurmdTimeout=60",
        f"NodeName={node} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={_mem_mb()} State=UNKNOWN",
        f"PartitionName={PARTITION} Nodes={node} Default=YES MaxTime=INFINITE State=UP",
        "",
    ])


def up(root: Path, timeout_s: float = 60) -> Cluster:
    """Start munged, slurmctld and slurmd under ``root``; return once the node is idle."""
    root = Path(root)
    for sub in ("state", "spool"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o755)
    node = socket.gethostname().split(".")[0]
    cluster = Cluster(root)
    cluster.conf.write_text(config(root, node))
    key = root / "munge.key"
    if not key.exists():
        subprocess.run([_bin("mungekey"), "--create", f"--keyfile={key}"], check=True, capture_output=True)
    os.chmod(key, 0o400)

    def run(*cmd: str) -> None:
        done = subprocess.run(cmd, capture_output=True, text=True, env=cluster.env, timeout=60)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed: {(done.stderr or done.stdout).strip()[-800:]}")

    try:
        run(_bin("munged"), "--force", f"--socket={root}/munge.socket", f"--key-file={key}",
            f"--pid-file={root}/munged.pid", f"--log-file={root}/munged.log", f"--seed-file={root}/munged.seed")
        run(_bin("slurmctld"), "-f", str(cluster.conf), "-c")  # -c: a clean start, no saved state
        run(_bin("slurmd"), "-f", str(cluster.conf), "-N", node)
        deadline = time.time() + timeout_s
        while True:
            state = subprocess.run(["sinfo", "-h", "-N", "-o", "%T"], capture_output=True, text=True,
                                   env=cluster.env).stdout.strip()
            if state in ("idle", "mixed", "allocated"):
                return cluster
            if time.time() > deadline:
                raise RuntimeError(f"the Slurm node did not come up (sinfo says {state!r}); see {root}/*.log")
            time.sleep(0.5)
    except BaseException:
        down(root)
        raise


def down(root: Path, timeout_s: float = 30) -> None:
    """Stop the daemons started by ``up(root)`` (by their pid files), slurmd first."""
    root = Path(root)
    for name in reversed(DAEMONS):
        pidfile = root / f"{name}.pid"
        try:
            pid = int(pidfile.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            continue
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.2)
        else:
            os.kill(pid, signal.SIGKILL)


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in ("up", "down"):
        sys.exit("usage: python tests/slurm_cluster.py up|down FOLDER")
    if sys.argv[1] == "up":
        if why := missing():
            sys.exit(why)
        c = up(Path(sys.argv[2]).resolve())
        print(f"export SLURM_CONF={c.conf}")
    else:
        down(Path(sys.argv[2]).resolve())
