#!/usr/bin/env bash
# The test command: installs what the end-to-end tests need when it is
# missing (idempotent), then runs every test. PostgreSQL must listen on
# 127.0.0.1:5432 with trust authentication.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -x scripts/install-test-deps.sh ]; then
  scripts/install-test-deps.sh
fi
exec cargo test --locked "$@"
