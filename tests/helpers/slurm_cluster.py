"""A real one-node Slurm (Debian's slurm-wlm and munge) in a temporary folder.

    with SlurmCluster(folder) as cluster:      # SLURM_CONF points every client at it
        subprocess.run(["sbatch", ...], env=cluster.env)

Every file of the cluster lives under the folder; the daemons are stopped by the
pids in their pid files. Settings from ../shared/notes/slurm-facts.md: a process
tracker and task plugin that need no systemd, CR_CPU so that jobs share the node,
cred_expire=10 so that a requeued job may start again after 11 s, not 121 s.
Run as a script, it starts the cluster and prints the export line for a shell.
"""
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

CONF = """\
ClusterName=hintkdtest
SlurmctldHost={host}(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
AuthInfo=cred_expire=10
StateSaveLocation={dir}/state
SlurmdSpoolDir={dir}/spool
SlurmctldPidFile={dir}/ctld.pid
SlurmdPidFile={dir}/d.pid
SlurmctldLogFile={dir}/ctld.log
SlurmdLogFile={dir}/d.log
SlurmctldPort={port}
SlurmdPort={dport}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SwitchType=switch/none
MpiDefault=none
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
MinJobAge=600
KillWait=30
NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory=2000 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""


class SlurmError(Exception):
    pass


def missing_tools():
    return [t for t in ("slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "munged")
            if not shutil.which(t) and not Path("/usr/sbin", t).exists()]


def munge_works():
    return subprocess.run(["sh", "-c", "munge -n | unmunge"], capture_output=True).returncode == 0


def start_munge():
    """munged as the munge user (the package made its key); returns its pid, or None
    when one was running already."""
    if munge_works():
        return None
    subprocess.run(["install", "-d", "-o", "munge", "-g", "munge", "-m0755", "/run/munge"], check=True)
    subprocess.run(["runuser", "-u", "munge", "--", "/usr/sbin/munged"], check=True)
    for _ in range(50):
        if munge_works():
            return int(Path("/run/munge/munged.pid").read_text())
        time.sleep(0.1)
    raise SlurmError("munged did not start")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SlurmCluster:
    def __init__(self, folder, cpus=None):
        self.dir = Path(folder).resolve()
        self.cpus = cpus or os.cpu_count() or 1
        self.conf = self.dir / "slurm.conf"
        self.env = dict(os.environ, SLURM_CONF=str(self.conf))

    def __enter__(self):
        if missing := missing_tools():
            raise SlurmError(f"not installed: {', '.join(missing)} (apt-get install slurm-wlm munge)")
        for sub in ("state", "spool"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        port = free_port()
        self.conf.write_text(CONF.format(host=socket.gethostname().split(".")[0], dir=self.dir, cpus=self.cpus,
                                         port=port, dport=free_port()))
        # slurmd 22.05 always loads a cgroup plugin, and reads its config beside slurm.conf.
        (self.dir / "cgroup.conf").write_text("CgroupPlugin=cgroup/v1\n")
        self.munged = start_munge()
        for daemon in ("slurmctld", "slurmd"):
            log = open(self.dir / f"{daemon}.out", "w")
            subprocess.Popen([f"/usr/sbin/{daemon}", "-D", "-f", str(self.conf)], stdout=log, stderr=log,
                             env=self.env, start_new_session=True)
        deadline = time.time() + 60
        while time.time() < deadline:
            state = subprocess.run(["sinfo", "-hN", "-o", "%T"], capture_output=True, text=True, env=self.env)
            if state.stdout.strip() == "idle":
                return self
            time.sleep(0.5)
        self.__exit__()
        raise SlurmError(f"the node did not become idle (logs in {self.dir})")

    def __exit__(self, *exc):
        subprocess.run(["scancel", "--full", "--signal=KILL", "-u", "root"], env=self.env, capture_output=True)
        pids = []
        for pidfile in ("d.pid", "ctld.pid"):
            try:
                pids.append(int((self.dir / pidfile).read_text()))
            except (FileNotFoundError, ValueError):
                pass
        pids += [self.munged] if getattr(self, "munged", None) else []
        for pid in pids:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        time.sleep(1)

    def squeue(self, *args):
        return subprocess.run(["squeue", "-h", *args], capture_output=True, text=True, env=self.env,
                              check=True).stdout

    def states(self):
        """{job id: state} of every job Slurm still holds, finished ones too (MinJobAge)."""
        return dict(line.split() for line in self.squeue("-t", "all", "-r", "-o", "%i %T").splitlines())

    def wait_until_idle(self, timeout):
        """Waits until no job is pending or running; returns the seconds it took."""
        started = time.time()
        while self.squeue().strip():  # pending, running, completing (a requeued job is pending)
            if time.time() - started > timeout:
                raise SlurmError(f"jobs still queued after {timeout} s:\n{self.squeue()}")
            time.sleep(1)
        return time.time() - started


if __name__ == "__main__":
    cluster = SlurmCluster(sys.argv[1]).__enter__()
    print(f"export SLURM_CONF={cluster.conf}")
