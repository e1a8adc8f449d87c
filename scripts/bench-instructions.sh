#!/usr/bin/env bash
# Instructions per gateway call: runs examples/proxy_bench with the server
# under callgrind (8 connections, 10 s), zeroes callgrind's counters once
# the gateway's warm-up is over, and divides the instructions counted from
# there to the server's end by the calls wrk counted. Unlike time, the
# figure hardly moves with the machine's noise (two runs of one build agree
# within 1 %). Needs scripts/install-bench-deps.sh, valgrind, and
#   cargo build --release --locked --bin credgate --example proxy_bench
# Usage: scripts/bench-instructions.sh [OUT_PREFIX]   (default /tmp/credgate-callgrind)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-/tmp/credgate-callgrind}
rm -f "$out".*
target/release/examples/proxy_bench --seconds 10 --connections 8 --pgbench-seconds 1 \
  --server-wrapper "valgrind --tool=callgrind --callgrind-out-file=$out.%p" >"$out.json" 2>"$out.err" &
bench=$!
until grep -q "wrk: credgate_proxy" "$out.err" 2>/dev/null; do
  kill -0 "$bench" 2>/dev/null || { cat "$out.err" >&2; exit 1; }
  sleep 0.2
done
sleep 2.5 # the 2 s warm-up
callgrind_control -z >/dev/null
wait "$bench"
python3 - "$out" <<'PY'
import glob, json, sys
out = sys.argv[1]
calls = json.load(open(out + ".json"))["runs"]["credgate_proxy"]["requests"]
total = 0
for name in glob.glob(out + ".[0-9]*"):
    for line in open(name):
        if line.startswith(("summary:", "totals:")):
            total = max(total, int(line.split()[1]))
print(json.dumps({"calls": calls, "instructions": total, "instructions_per_call": round(total / max(calls, 1))}))
PY
