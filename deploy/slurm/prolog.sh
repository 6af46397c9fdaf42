#!/bin/sh
# keel's PrologSlurmctld: tells the keel controller that job $SLURM_JOB_ID
# started, on which nodes, with which ranks where, and which GPUs Slurm
# allocated to it on each node.
#
# The GPU indices come from Slurm, never from the rank numbers: for a
# one-node job from SLURM_JOB_GPUS (else SLURM_STEP_GPUS, else
# CUDA_VISIBLE_DEVICES when it holds indices rather than UUIDs), otherwise
# from the per-node GRES detail of `scontrol show job -d -o $SLURM_JOB_ID`
# (read by keel itself). When neither says, keel records them as unknown,
# and no rule reclaims on them; ranks are then put on local GPUs 0, 1, ...
# as a guess that keel keeps apart from the allocation.
#
# Runs once per job on the slurmctld host (slurm.conf:
# PrologSlurmctld=/usr/local/lib/keel/prolog.sh), where Slurm sets
# SLURM_JOB_ID, SLURM_JOB_NODELIST, SLURM_JOB_USER and SLURM_JOB_ACCOUNT.
# A per-node Prolog would register the job once per node, each time with
# only that node: use the slurmctld one.
#
# Settings come from /etc/keel/slurm.env (or $KEEL_SLURM_ENV), KEY=VALUE
# lines that are read, never executed:
#   KEEL_CONTROLLER=10.0.0.1:7000    the controller's address (required)
#   KEEL_NAME=controller-1           the name in its certificate (required)
#   KEEL_CREDENTIALS=/etc/keel/op    an operator certificate folder (required)
#   KEEL_BIN=/usr/local/bin/keel     the keel binary
#   KEEL_RANKS_PER_NODE=8            ranks per node, numbered node by node
#   KEEL_TIMEOUT=10                  seconds to wait for the controller
#   KEEL_SCONTROL=scontrol           to expand hostlists such as gpu[01-04]
#
# It always exits 0: keel being away must never hold up or requeue jobs.
# Failures go to syslog (tag keel-slurm) and to stderr.

set -u
set -f
PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export PATH

log() {
    if command -v logger >/dev/null 2>&1; then
        logger -t keel-slurm -- "prolog: $*" 2>/dev/null || true
    fi
    printf 'keel-slurm prolog: %s\n' "$*" >&2
}

ENV_FILE=${KEEL_SLURM_ENV:-/etc/keel/slurm.env}
KEEL_BIN=keel
KEEL_CONTROLLER=
KEEL_NAME=
KEEL_CREDENTIALS=
KEEL_RANKS_PER_NODE=1
KEEL_TIMEOUT=10
KEEL_SCONTROL=scontrol

# KEY=VALUE, one per line; '#' comments; one pair of quotes around a value
# is taken off. Unknown keys are reported and ignored.
read_env() {
    [ -r "$ENV_FILE" ] || { log "cannot read $ENV_FILE"; return 1; }
    while IFS= read -r line || [ -n "$line" ]; do
        case $line in '' | '#'*) continue ;; esac
        case $line in *=*) ;; *) log "ignoring line without '=' in $ENV_FILE"; continue ;; esac
        key=$(printf '%s' "${line%%=*}" | tr -d ' \t')
        val=${line#*=}
        case $val in
        \"*\") val=${val#\"}; val=${val%\"} ;;
        \'*\') val=${val#\'}; val=${val%\'} ;;
        esac
        case $key in
        KEEL_BIN) KEEL_BIN=$val ;;
        KEEL_CONTROLLER) KEEL_CONTROLLER=$val ;;
        KEEL_NAME) KEEL_NAME=$val ;;
        KEEL_CREDENTIALS) KEEL_CREDENTIALS=$val ;;
        KEEL_RANKS_PER_NODE) KEEL_RANKS_PER_NODE=$val ;;
        KEEL_TIMEOUT) KEEL_TIMEOUT=$val ;;
        KEEL_SCONTROL) KEEL_SCONTROL=$val ;;
        *) log "ignoring unknown key $key in $ENV_FILE" ;;
        esac
    done <"$ENV_FILE"
}

read_env || exit 0
missing=
[ -n "$KEEL_CONTROLLER" ] || missing="$missing KEEL_CONTROLLER"
[ -n "$KEEL_NAME" ] || missing="$missing KEEL_NAME"
[ -n "$KEEL_CREDENTIALS" ] || missing="$missing KEEL_CREDENTIALS"
[ -z "$missing" ] || { log "not set in $ENV_FILE:$missing; job not registered"; exit 0; }
case ${SLURM_JOB_ID:-} in
'' | *[!0-9]*) log "SLURM_JOB_ID '${SLURM_JOB_ID:-}' is not a job id"; exit 0 ;;
esac
case $KEEL_RANKS_PER_NODE in
'' | *[!0-9]* | 0) log "KEEL_RANKS_PER_NODE '$KEEL_RANKS_PER_NODE' is not a positive number"; exit 0 ;;
esac
case $KEEL_TIMEOUT in
'' | *[!0-9]*) KEEL_TIMEOUT=10 ;;
esac
list=${SLURM_JOB_NODELIST:-}
[ -n "$list" ] || { log "SLURM_JOB_NODELIST is empty for job $SLURM_JOB_ID"; exit 0; }

# Plain lists need no expansion; bracketed ones go through Slurm's own.
case $list in
*'['*)
    if ! nodes=$("$KEEL_SCONTROL" show hostnames "$list"); then
        log "cannot expand node list '$list' for job $SLURM_JOB_ID"
        exit 0
    fi
    ;;
*) nodes=$(printf '%s\n' "$list" | tr ',' '\n') ;;
esac

# An index list as Slurm writes one (0,2-3,5), or nothing.
index_list() {
    case $1 in
    '' | *[!0-9,-]* | ,* | *, | *,,* | -* | *-) return 1 ;;
    esac
    printf '%s' "$1"
}

count=0
for node in $nodes; do count=$((count + 1)); done
allocated=
if [ "$count" -eq 1 ]; then
    for v in "${SLURM_JOB_GPUS:-}" "${SLURM_STEP_GPUS:-}" "${CUDA_VISIBLE_DEVICES:-}"; do
        if allocated=$(index_list "$v"); then break; fi
        allocated=
    done
fi
detail=
if [ -z "$allocated" ]; then
    detail=$("$KEEL_SCONTROL" show job -d -o "$SLURM_JOB_ID" 2>/dev/null) || detail=
    [ -n "$detail" ] || log "GPU indices of job $SLURM_JOB_ID unknown: no SLURM_JOB_GPUS and no scontrol show job -d"
fi

set -- job register --job "$SLURM_JOB_ID"
rank=0
gpus=
for node in $nodes; do
    case $node in
    '' | -* | *[!A-Za-z0-9._-]*) log "node name '$node' of job $SLURM_JOB_ID is not valid"; exit 0 ;;
    esac
    ranks=
    local_index=0
    while [ "$local_index" -lt "$KEEL_RANKS_PER_NODE" ]; do
        ranks=${ranks:+$ranks,}$rank
        gpus=${gpus:+$gpus,}$rank=$local_index
        rank=$((rank + 1))
        local_index=$((local_index + 1))
    done
    set -- "$@" --ranks "$node=$ranks"
    [ -z "$allocated" ] || set -- "$@" --node-gpus "$node=$allocated"
done
[ "$rank" -gt 0 ] || { log "no nodes for job $SLURM_JOB_ID"; exit 0; }
# Local rank i on GPU i: a guess, which keel replaces by the allocated GPUs
# in order where Slurm named as many as the node has ranks.
set -- "$@" --gpus "$gpus"
[ -z "$detail" ] || set -- "$@" --slurm-detail "$detail"
tenant=${SLURM_JOB_ACCOUNT:-}
[ -n "$tenant" ] || tenant=${SLURM_JOB_USER:-}
[ -z "$tenant" ] || set -- "$@" --tenant "$tenant"
set -- "$@" --controller "$KEEL_CONTROLLER" --name "$KEEL_NAME" --credentials "$KEEL_CREDENTIALS"

if command -v timeout >/dev/null 2>&1; then
    timeout "$KEEL_TIMEOUT" "$KEEL_BIN" "$@" >/dev/null
else
    "$KEEL_BIN" "$@" >/dev/null
fi
rc=$?
[ "$rc" -eq 0 ] || log "keel job register --job $SLURM_JOB_ID failed (exit $rc)"
exit 0
