#!/usr/bin/env bash
# Counts the instructions the proxy executes per transaction, pooled and
# pass-through, with callgrind: steadier than timing on a shared or
# virtual machine, where tps moves by several percent between runs and
# hardware counters (`perf stat`) may not be exposed.
#
# Both proxies of the `profiling` build run under `valgrind
# --tool=callgrind` in front of one PostgreSQL (the setup of
# bench-pool.sh: TLS 1.3 with a client certificate, the pooled one in
# transaction mode, trust over the unix socket). After WARMUP
# transactions through each, the counters are zeroed; TXNS transactions
# of `pgbench -n -S -c 2 -j 1` go through each; the counters are dumped
# and the self cost of each function is printed per transaction, pooled
# next to pass-through, the largest differences first.
#
# Needs root, PostgreSQL server binaries, pgbench, valgrind and python3.
# Knobs: TXNS (2000), WARMUP (200), TOP functions printed (30),
# SKIP_BUILD=1 (use target/profiling/intransit as built), KEEP=1.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
# shellcheck source=scripts/lib/postgres.sh
source "$repo/scripts/lib/postgres.sh"

TXNS=${TXNS:-2000}
WARMUP=${WARMUP:-200}
TOP=${TOP:-30}

pg_require
command -v valgrind >/dev/null || die "valgrind not found (apt-get install valgrind)"
command -v callgrind_control >/dev/null || die "callgrind_control not found (apt-get install valgrind)"
if [[ ${SKIP_BUILD:-0} != 1 ]]; then
    log "building (profiling)"
    cargo build --locked --profile profiling -p intransit >&2
fi
profiling=$CARGO_TARGET_DIR/profiling/intransit
[[ -x $profiling ]] || die "$profiling not built"

pg_workdir intransit-instructions
pg_certificates
pg_start 200
pg_pgbench_init 10
pg_proxy_config 60s 1000 -
pg_pool_config transaction 5 60s 1000

# The proxies under callgrind, one output file per process.
wrapper=$work/callgrind-intransit
cat >"$wrapper" <<EOF
#!/bin/sh
exec valgrind --tool=callgrind --callgrind-out-file=$work/callgrind.%p "$profiling" "\$@"
EOF
chmod +x "$wrapper"
intransit=$wrapper
pg_start_pool_proxy warn
pg_start_proxy warn

for port in "$pool_port" "$proxy_port"; do
    pgbench -n -S -c 2 -j 1 -t $((WARMUP / 2)) "$(conninfo "$port")" >/dev/null 2>&1 \
        || die "warm-up through port $port failed"
done
callgrind_control -z >/dev/null 2>&1
for port in "$pool_port" "$proxy_port"; do
    log "pgbench -S: $TXNS transactions through port $port"
    pgbench -n -S -c 2 -j 1 -t $((TXNS / 2)) "$(conninfo "$port")" >/dev/null 2>&1 \
        || die "pgbench through port $port failed"
done
callgrind_control -d >/dev/null 2>&1
sleep 1

# Self cost per function: the cost lines of each `fn=` block, without
# those that follow a `calls=` line (a callee's inclusive cost).
python3 - "$work/callgrind.$pool_pid.1" "$work/callgrind.$proxy_pid.1" "$TXNS" "$TOP" <<'PY'
import collections, re, sys

def self_costs(path):
    names, costs, fn, after_call = {}, collections.Counter(), None, False
    for line in open(path):
        m = re.match(r'^(c?)fn=\((\d+)\)(?: (.*))?$', line.rstrip('\n'))
        if m:
            if m.group(3):
                names[m.group(2)] = m.group(3)
            if not m.group(1):
                fn = names.get(m.group(2), m.group(2))
            continue
        if line.startswith('calls='):
            after_call = True
            continue
        parts = line.split()
        if len(parts) >= 2 and (line[0].isdigit() or line[0] in '+-*'):
            if after_call:
                after_call = False
            else:
                costs[fn] += int(parts[1])
    return costs

pooled, passthrough = self_costs(sys.argv[1]), self_costs(sys.argv[2])
txns, top = int(sys.argv[3]), int(sys.argv[4])
print(f"instructions per transaction: pooled {sum(pooled.values()) / txns:.0f}, "
      f"pass-through {sum(passthrough.values()) / txns:.0f}")
print(f"{'pooled':>9} {'pass-thr.':>9} {'diff':>8}  function (self cost)")
for name in sorted(set(pooled) | set(passthrough),
                   key=lambda k: -(pooled[k] - passthrough[k]))[:top]:
    print(f"{pooled[name] / txns:9.0f} {passthrough[name] / txns:9.0f} "
          f"{(pooled[name] - passthrough[name]) / txns:8.0f}  {str(name)[:140]}")
PY
