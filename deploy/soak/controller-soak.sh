#!/usr/bin/env bash
# Soak of the controller (not in CI): three `keel controller` replicas on
# this host for an hour, steady straggler findings (2/s, each closed 30 s
# later) and the actions a policy makes of them (one per finding), the leader
# SIGKILLed every two minutes and started again 10 s later. Every 10 s, for
# each replica: resident memory, CPU time, applied index, digest, jobs,
# findings (all, open), ledger entries, audit events and the size of its
# data folder, into a CSV.
#
#   deploy/soak/controller-soak.sh [OUT_DIR] [extra `keel bench soak` flags]
#
# Environment: KEEL (the binary; default target/release/keel, built if
# missing), MINUTES (60), KILL_EVERY_S (120), SAMPLE_EVERY_S (10), POLICY
# (deploy/soak/soak-policy.toml: every finding becomes an action, which
# fails 10 s later as no executor is connected; give
# deploy/policies/default.toml for the production rules, whose cooldowns
# and rate limits make few actions), KEEP (10m: the controllers'
# `[retention] keep`, so that an hour shows closed findings and settled
# actions leaving the state; "" leaves the default of 7 days).
# OUT_DIR (default soak-UTCDATE) receives soak.csv, summary.txt and the
# cluster's folder (data, logs c1.log..c3.log).
set -euo pipefail

cd "$(dirname "$0")/../.."
KEEL=${KEEL:-target/release/keel}
OUT=${1:-soak-$(date -u +%Y%m%dT%H%M%SZ)}
shift || true
if [ ! -x "$KEEL" ]; then
    cargo build --release -p keel-cli --bin keel
fi
mkdir -p "$OUT"
EXTRA=()
KEEP=${KEEP-10m}
if [ -n "$KEEP" ]; then
    EXTRA=(--extra-config "$(printf '[retention]\nkeep = "%s"' "$KEEP")")
fi
echo "soak: ${MINUTES:-60} min, leader killed every ${KILL_EVERY_S:-120} s; samples in $OUT/soak.csv" >&2
"$KEEL" bench soak \
    --minutes "${MINUTES:-60}" \
    --kill-every-s "${KILL_EVERY_S:-120}" \
    --sample-every-s "${SAMPLE_EVERY_S:-10}" \
    --out "$OUT/soak.csv" \
    --dir "$OUT/cluster" \
    --policy "${POLICY:-deploy/soak/soak-policy.toml}" \
    "${EXTRA[@]}" \
    "$@" | tee "$OUT/summary.txt"

# Per replica: resident memory first, highest and last; applied index and
# data folder size first and last. Then whether the last sample's digests agree.
awk -F, 'NR > 1 && $4 != "" {
    r = $2
    if (!(r in first)) { first[r] = $4; a0[r] = $8; d0[r] = $15; t0[r] = $1 }
    if ($4 + 0 > max[r] + 0) max[r] = $4
    if ($11 + $13 + $14 > maxs[r] + 0) { maxs[r] = $11 + $13 + $14; at[r] = $1 }
    last[r] = $4; a1[r] = $8; d1[r] = $15; t1[r] = $1; s1[r] = $11 "/" $13 "/" $14
}
END {
    for (r in first)
        printf "%s: RSS %.1f -> %.1f MiB (max %.1f) over %.0f-%.0f s; applied %s -> %s; data %.1f -> %.1f MiB; findings/ledger/audit last %s, largest sum %d at %.0f s\n",
            r, first[r] / 1024, last[r] / 1024, max[r] / 1024, t0[r], t1[r], a0[r], a1[r], d0[r] / 1048576, d1[r] / 1048576, s1[r], maxs[r], at[r]
}' "$OUT/soak.csv" | sort | tee -a "$OUT/summary.txt"
awk -F, 'NR > 1 { last_t = $1; if ($8 != "") d[$1] = d[$1] " " $2 ":" $7 "/" $8 "/" $9 }
END { print "last sample (replica:term/applied/digest):" d[last_t] }' "$OUT/soak.csv" | tee -a "$OUT/summary.txt"
