#!/usr/bin/env bash
# The whole test suite on a fresh machine: installs and starts what it needs (Docker engine,
# local OCI registry, base image, virtualenv) through ci/setup.sh, then runs every tier of tests.
# Under CI=true, tests that need Docker fail rather than skip when no engine answers.
#
#   bash ci/test.sh                 # everything
#   bash ci/test.sh -m "not docker" # a quick subset (extra arguments go to pytest)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash ci/setup.sh
exec "$ROOT/.venv/bin/python" -m pytest "$@"
