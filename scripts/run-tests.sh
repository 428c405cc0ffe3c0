#!/usr/bin/env bash
# Runs the whole suite. pytest exits 5 when nothing ran: that is a failure here too.
set -uo pipefail
cd "$(dirname "$0")/.."
.venv/bin/python -m pytest "$@"
rc=$?
if [ $rc -eq 5 ]; then echo "run-tests: no test ran" >&2; exit 1; fi
exit $rc
