#!/usr/bin/env bash
# Start a single-node Slurm cluster on this machine for the workflow's Slurm test.
#
# Needs root. Installs Debian's slurm-wlm and munge when missing, writes a minimal
# configuration (select/cons_tres, no accounting storage) with one declared GPU so that
# `--gpus=1` requests are scheduled for real (gres.conf points the GPU at /dev/null), and
# starts munged, slurmctld and slurmd. Idempotent: rerunning restarts the daemons.
set -euo pipefail

if [ "$(id -u)" -ne 0 ]; then
    echo "start_cluster.sh: must run as root" >&2
    exit 1
fi

if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq slurm-wlm munge >/dev/null
fi

host=$(hostname -s)
cpus=$(nproc)
# Leave headroom below what the kernel reports so slurmd does not drain the node.
mem_mb=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 512 ))

mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm /run/munge /var/lib/munge /var/log/munge
cat > /etc/slurm/slurm.conf <<CONF
ClusterName=unetscout
SlurmctldHost=${host}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
MpiDefault=none
KillWait=10
GresTypes=gpu
NodeName=${host} CPUs=${cpus} RealMemory=${mem_mb} Gres=gpu:1 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
cat > /etc/slurm/gres.conf <<CONF
Name=gpu File=/dev/null
CONF

if [ ! -s /etc/munge/munge.key ]; then
    mkdir -p /etc/munge
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
fi
chown -R munge:munge /etc/munge /run/munge /var/lib/munge /var/log/munge 2>/dev/null || true
chmod 0700 /etc/munge && chmod 0400 /etc/munge/munge.key

pkill -x slurmd 2>/dev/null || true
pkill -x slurmctld 2>/dev/null || true
if ! pgrep -x munged >/dev/null; then
    runuser -u munge -- munged
fi
sleep 1
slurmctld
slurmd

for _ in $(seq 1 30); do
    state=$(sinfo -h -N -o '%T' 2>/dev/null | head -n1)
    if [ "$state" = "idle" ] || [ "$state" = "mixed" ]; then
        echo "slurm: node ${host} ${state} (${cpus} CPUs, ${mem_mb} MB, gpu:1)"
        exit 0
    fi
    scontrol update nodename="${host}" state=resume >/dev/null 2>&1 || true
    sleep 1
done
echo "start_cluster.sh: the node did not become idle; see /var/log/slurm/" >&2
sinfo -N -l >&2 || true
exit 1
