#!/bin/sh
# keel's EpilogSlurmctld: tells the keel controller that job $SLURM_JOB_ID
# ended, and how (slurm.conf: EpilogSlurmctld=/usr/local/lib/keel/epilog.sh).
#
# The final state comes from SLURM_JOB_EXIT_CODE2 (`exit:signal`): killed
# by a signal (scancel, time limit, preemption) is CANCELLED, a non-zero
# exit is FAILED, else COMPLETED.
#
# Settings: the same /etc/keel/slurm.env (or $KEEL_SLURM_ENV) as prolog.sh.
# It always exits 0: keel being away must never hold up a node's cleanup.

set -u
set -f
PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export PATH

log() {
    if command -v logger >/dev/null 2>&1; then
        logger -t keel-slurm -- "epilog: $*" 2>/dev/null || true
    fi
    printf 'keel-slurm epilog: %s\n' "$*" >&2
}

ENV_FILE=${KEEL_SLURM_ENV:-/etc/keel/slurm.env}
KEEL_BIN=keel
KEEL_CONTROLLER=
KEEL_NAME=
KEEL_CREDENTIALS=
KEEL_TIMEOUT=10

# The same reader as prolog.sh; keys only it uses are accepted silently.
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
        KEEL_TIMEOUT) KEEL_TIMEOUT=$val ;;
        KEEL_RANKS_PER_NODE | KEEL_SCONTROL) ;;
        *) log "ignoring unknown key $key in $ENV_FILE" ;;
        esac
    done <"$ENV_FILE"
}

read_env || exit 0
missing=
[ -n "$KEEL_CONTROLLER" ] || missing="$missing KEEL_CONTROLLER"
[ -n "$KEEL_NAME" ] || missing="$missing KEEL_NAME"
[ -n "$KEEL_CREDENTIALS" ] || missing="$missing KEEL_CREDENTIALS"
[ -z "$missing" ] || { log "not set in $ENV_FILE:$missing; job end not reported"; exit 0; }
case ${SLURM_JOB_ID:-} in
'' | *[!0-9]*) log "SLURM_JOB_ID '${SLURM_JOB_ID:-}' is not a job id"; exit 0 ;;
esac
case $KEEL_TIMEOUT in
'' | *[!0-9]*) KEEL_TIMEOUT=10 ;;
esac

code=${SLURM_JOB_EXIT_CODE2:-}
case $code in
*:*) status=${code%%:*}; signal=${code#*:} ;;
*)
    # Only the wait(2) status: low 7 bits the signal, next 8 the exit code.
    raw=${SLURM_JOB_EXIT_CODE:-0}
    case $raw in '' | *[!0-9]*) raw=0 ;; esac
    signal=$((raw & 127))
    status=$(((raw >> 8) & 255))
    ;;
esac
case $status in '' | *[!0-9]*) status=0 ;; esac
case $signal in '' | *[!0-9]*) signal=0 ;; esac
if [ "$signal" -ne 0 ]; then
    state=CANCELLED
elif [ "$status" -ne 0 ]; then
    state=FAILED
else
    state=COMPLETED
fi

set -- job end --job "$SLURM_JOB_ID" --state "$state" \
    --controller "$KEEL_CONTROLLER" --name "$KEEL_NAME" --credentials "$KEEL_CREDENTIALS"
if command -v timeout >/dev/null 2>&1; then
    timeout "$KEEL_TIMEOUT" "$KEEL_BIN" "$@" >/dev/null
else
    "$KEEL_BIN" "$@" >/dev/null
fi
rc=$?
[ "$rc" -eq 0 ] || log "keel job end --job $SLURM_JOB_ID --state $state failed (exit $rc)"
exit 0
