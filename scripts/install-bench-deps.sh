#!/usr/bin/env bash
# What the benchmarks need beyond the tests' own tools: wrk and nginx
# (Debian's nginx-light) for examples/proxy_bench, valgrind for
# scripts/bench-instructions.sh; pgbench comes with the
# PostgreSQL client. Idempotent; needs root and apt-get.
set -euo pipefail
missing=()
command -v wrk >/dev/null || missing+=(wrk)
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || missing+=(nginx-light)
command -v pgbench >/dev/null || missing+=(postgresql-contrib)
# scripts/bench-instructions.sh counts instructions under callgrind.
command -v valgrind >/dev/null || missing+=(valgrind)
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
# The packaged nginx starts a server of its own on port 80; the benchmark
# runs its own from a temporary directory.
if command -v systemctl >/dev/null && systemctl is-active --quiet nginx 2>/dev/null; then
  systemctl stop nginx || true
fi
pkill -x nginx 2>/dev/null || true
