#!/bin/sh
# A one-node Slurm cluster on this host, for the executor tests: munge,
# slurmctld and slurmd, with the node named after `hostname -s`.
#
#   slurm-one-node.sh [start]        configure and start what is not running
#   slurm-one-node.sh stop [NAME...] stop the daemons this script started
#                                    (munged, slurmctld, slurmd; default all)
#
# Idempotent: a second `start` leaves running daemons alone and only resumes
# the node if an earlier run left it drained or down. It needs root and the
# Debian packages slurm-wlm and munge. It refuses to overwrite a slurm.conf
# that it did not write, so that it never clobbers a real cluster's config.
# On success `start` prints `started: ...` with the daemons it started
# (nothing after the colon when all were running already).
set -eu

MARK='# written by keel tests/setup/slurm-one-node.sh'
CONF=/etc/slurm/slurm.conf
RUN=/var/run/slurm
STATE=/var/lib/keel-test-slurm

die() {
    printf 'slurm-one-node: %s\n' "$*" >&2
    exit 1
}

need() {
    command -v "$1" >/dev/null 2>&1 || die "$1 not found: install the Debian packages slurm-wlm and munge (apt-get install -y slurm-wlm munge)"
}

alive() {
    # alive PIDFILE: the pid in the file names a live process
    [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null
}

stop_one() {
    # stop_one NAME PIDFILE: only daemons this script started (listed in $STATE)
    if [ -f "$STATE/$1" ] && alive "$2"; then
        pid=$(cat "$2")
        kill "$pid" 2>/dev/null || true
        i=0
        while kill -0 "$pid" 2>/dev/null && [ "$i" -lt 100 ]; do
            sleep 0.1
            i=$((i + 1))
        done
        kill -0 "$pid" 2>/dev/null && kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$STATE/$1"
}

if [ "${1:-start}" = stop ]; then
    shift
    [ "$#" -gt 0 ] || set -- slurmd slurmctld munged
    # slurmd before slurmctld before munged, whatever the order given.
    for name in slurmd slurmctld munged; do
        for want in "$@"; do
            [ "$want" = "$name" ] || continue
            case $name in
            munged) stop_one munged /run/munge/munged.pid ;;
            *) stop_one "$name" "$RUN/$name.pid" ;;
            esac
        done
    done
    exit 0
fi
[ "${1:-start}" = start ] || die "usage: $0 [start|stop]"

[ "$(id -u)" = 0 ] || die "needs root (to write /etc/slurm and start munged, slurmctld and slurmd as root); run the tests as root"
for p in munged munge unmunge slurmctld slurmd sinfo scontrol; do need "$p"; done

NODE=$(hostname -s)
CPUS=$(nproc)
# RealMemory a little under MemTotal, or slurmd registers the node as invalid.
MEM=$(awk '/^MemTotal:/ { printf "%d", $2 / 1024 * 0.9 }' /proc/meminfo)
[ -n "$NODE" ] || die "hostname -s is empty"
getent hosts "$NODE" >/dev/null || die "the host name $NODE does not resolve: add it to /etc/hosts"

mkdir -p "$STATE" /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm "$RUN"
started=

# munge: the package made the key; the daemon runs as its own user.
if ! alive /run/munge/munged.pid; then
    [ -f /etc/munge/munge.key ] || die "/etc/munge/munge.key is missing: reinstall munge (apt-get install --reinstall munge)"
    mkdir -p /run/munge
    chown munge:munge /run/munge
    chmod 0755 /run/munge
    su -s /bin/sh munge -c /usr/sbin/munged || die "munged did not start (see /var/log/munge/munged.log)"
    : >"$STATE/munged"
    started="$started munged"
fi
i=0
until munge -n 2>/dev/null | unmunge >/dev/null 2>&1; do
    i=$((i + 1))
    [ "$i" -lt 50 ] || die "munge -n | unmunge does not succeed"
    sleep 0.1
done

if [ -f "$CONF" ] && ! grep -qF "$MARK" "$CONF"; then
    die "$CONF exists and was not written by this script; move it away to run the tests"
fi
new=$(mktemp)
cat >"$new" <<CONF
$MARK
ClusterName=keeltest
SlurmctldHost=$NODE
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SlurmUser=root
SlurmdUser=root
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
JobRequeue=1
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
NodeName=$NODE CPUs=$CPUS RealMemory=$MEM State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
CONF
if [ -f "$CONF" ] && cmp -s "$new" "$CONF"; then
    rm -f "$new"
else
    chmod 0644 "$new"
    mv "$new" "$CONF"
    # A running controller keeps the old config until told.
    if alive "$RUN/slurmctld.pid"; then scontrol reconfigure || true; fi
fi

if ! alive "$RUN/slurmctld.pid"; then
    slurmctld || die "slurmctld did not start (see /var/log/slurm/slurmctld.log)"
    : >"$STATE/slurmctld"
    started="$started slurmctld"
fi
i=0
until scontrol ping 2>/dev/null | grep -q 'is UP'; do
    i=$((i + 1))
    [ "$i" -lt 300 ] || die "slurmctld does not answer scontrol ping (see /var/log/slurm/slurmctld.log)"
    sleep 0.1
done

if ! alive "$RUN/slurmd.pid"; then
    slurmd || die "slurmd did not start (see /var/log/slurm/slurmd.log)"
    : >"$STATE/slurmd"
    started="$started slurmd"
fi

# Wait for the node to register; then give back a node that an earlier run
# left drained or down, so that a job submitted now runs.
i=0
while :; do
    state=$(sinfo -h -n "$NODE" -o '%T' 2>/dev/null | head -n 1)
    case "$state" in
    idle* | mixed* | allocated* | completing*) break ;;
    drain* | down* | fail*)
        scontrol update NodeName="$NODE" State=RESUME >/dev/null 2>&1 || true
        ;;
    esac
    i=$((i + 1))
    [ "$i" -lt 600 ] || die "node $NODE is not usable after 60 s (sinfo says: ${state:-nothing}; see /var/log/slurm/slurmd.log)"
    sleep 0.1
done
printf 'started:%s\n' "$started"
