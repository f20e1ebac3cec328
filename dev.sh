#!/usr/bin/env bash
# One command each, on a fresh machine with Python 3.11+:
#   ./dev.sh demo   set up, load synthetic data into SQLite and serve http://127.0.0.1:5000: the
#                   website, the call-center console and the partner API, with accounts and keys
#   ./dev.sh portal ARGS  run any `portal` command (the README's `portal ...`) without activating .venv
#   ./dev.sh test   set up and run the tests (PostgreSQL/Redis tests too when PORTAL_TEST_* are set)
#   ./dev.sh lint-imports  check that imports follow docs/architecture.md's layers
#   ./dev.sh stack  rehearse production on this machine: nginx (TLS) in front of two gunicorn
#                   servers on one PostgreSQL and Redis (deploy/stack.py; needs Debian's nginx)
# Extra arguments go to the command: ./dev.sh demo --patients 5000, ./dev.sh test -k claims
set -euo pipefail
cd "$(dirname "$0")"
venv=${PORTAL_VENV:-.venv}

setup() {
  if [[ ! -x $venv/bin/python ]]; then
    python3 -m venv "$venv"
  fi
  # Reinstall only when the dependencies changed.
  if [[ ! -f $venv/.installed || setup.cfg -nt $venv/.installed ]]; then
    "$venv/bin/python" -m pip install --quiet --upgrade pip
    "$venv/bin/python" -m pip install --quiet -e ".[test]"
    touch "$venv/.installed"
  fi
}

command=${1:-}
shift || true
case $command in
  demo) setup; exec "$venv/bin/portal" demo "$@" ;;
  portal) setup; exec "$venv/bin/portal" "$@" ;;
  test) setup; exec "$venv/bin/python" -m pytest "$@" ;;
  stack) setup; exec "$venv/bin/python" deploy/stack.py "$@" ;;
  lint-imports) setup; exec "$venv/bin/lint-imports" "$@" ;;
  *) echo "usage: ./dev.sh demo|portal|test|stack|lint-imports [arguments]" >&2; exit 2 ;;
esac
