#!/usr/bin/env bash
# Compares the pooled proxy with the pass-through proxy on persistent
# connections by pairs of runs: on a shared or virtual machine tps moves
# by 10% and more from one minute to the next, so a few interleaved runs
# can put either ahead. Here both proxies run side by side in front of one
# PostgreSQL (the setup of bench-pool.sh: TLS 1.3 with a client
# certificate, the pooled one in transaction mode with 5 server
# connections, trust over the unix socket), and each pair runs `pgbench -n
# -S -c CLIENTS -j 1 -T RUN_SECONDS` through both, back to back, the order
# alternating from pair to pair. Each pair's ratio (pooled tps over
# pass-through tps) and each proxy's CPU per 10,000 transactions are
# printed, then the median ratio and how many pairs put the pool ahead.
#
# Needs root, PostgreSQL server binaries and pgbench.
# Knobs: PAIRS (16), RUN_SECONDS per run (5), CLIENTS (2; more than 5
# makes clients wait for the pool's server connections), POOL_WORKERS
# (the pooled proxy's worker_threads; unset: its default), SKIP_BUILD=1 (use the release
# build as built), KEEP=1, INTRANSIT (another build of the proxy).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
# shellcheck source=scripts/lib/postgres.sh
source "$repo/scripts/lib/postgres.sh"

PAIRS=${PAIRS:-16}
SECONDS_PER_RUN=${RUN_SECONDS:-5}
CLIENTS=${CLIENTS:-2}

pg_require
command -v python3 >/dev/null || die "python3 not found (apt-get install python3)"
if [[ ${SKIP_BUILD:-0} != 1 ]]; then
    log "building (release)"
    cargo build --locked --release -p intransit >&2
fi
[[ -x $intransit ]] || die "$intransit not built"

pg_workdir intransit-pair
pg_certificates
pg_start 200
pg_pgbench_init 10
pg_proxy_config 60s 1000 -
pg_pool_config transaction 5 60s 1000
if [[ -n ${POOL_WORKERS:-} ]]; then
    sed -i "1i worker_threads = $POOL_WORKERS" "$work/pool.toml"
fi
pg_start_pool_proxy warn
pg_start_proxy warn

tps_of() { # port
    pgbench -n -S -c "$CLIENTS" -j 1 -T "$SECONDS_PER_RUN" "$(conninfo "$1")" 2>&1 \
        | sed -n 's/^tps = \([0-9.]*\).*/\1/p'
}
cpu_ticks() { # pid: user + system clock ticks so far
    awk '{print $14 + $15}' "/proc/$1/stat"
}

log "warm-up"
tps_of "$pool_port" >/dev/null
tps_of "$proxy_port" >/dev/null
ticks=$(getconf CLK_TCK)
results=$work/pairs.txt
: >"$results"
for i in $(seq "$PAIRS"); do
    if ((i % 2)); then order="pooled passthrough"; else order="passthrough pooled"; fi
    declare -A tps=() cpu=()
    for target in $order; do
        if [[ $target == pooled ]]; then port=$pool_port pid=$pool_pid; else port=$proxy_port pid=$proxy_pid; fi
        before=$(cpu_ticks "$pid")
        tps[$target]=$(tps_of "$port")
        [[ -n ${tps[$target]} ]] || die "pgbench through $target (port $port) failed"
        cpu[$target]=$(($(cpu_ticks "$pid") - before))
    done
    echo "$i ${tps[pooled]} ${tps[passthrough]} ${cpu[pooled]} ${cpu[passthrough]}" >>"$results"
    log "pair $i of $PAIRS: pooled ${tps[pooled]} tps, pass-through ${tps[passthrough]} tps"
done

python3 - "$results" "$SECONDS_PER_RUN" "$ticks" <<'PY'
import statistics, sys

rows = [line.split() for line in open(sys.argv[1])]
seconds, ticks = float(sys.argv[2]), float(sys.argv[3])
print("| pair | pooled tps | pass-through tps | ratio | pooled CPU ms / 10k | pass-through CPU ms / 10k |")
print("|---|---|---|---|---|---|")
ratios = []
for n, pooled, passthrough, cpu_pooled, cpu_pass in rows:
    pooled, passthrough = float(pooled), float(passthrough)
    ratio = pooled / passthrough
    ratios.append(ratio)
    per10k = lambda cpu, tps: float(cpu) / ticks * 1000 / (tps * seconds) * 10000
    print(f"| {n} | {pooled:.0f} | {passthrough:.0f} | {ratio:.3f} | "
          f"{per10k(cpu_pooled, pooled):.0f} | {per10k(cpu_pass, passthrough):.0f} |")
ahead = sum(r > 1 for r in ratios)
print()
print(f"median ratio pooled / pass-through: {statistics.median(ratios):.3f} "
      f"(quartiles {statistics.quantiles(ratios, n=4)[0]:.3f} to "
      f"{statistics.quantiles(ratios, n=4)[2]:.3f}); pooled ahead in {ahead} of {len(ratios)} pairs")
PY
