#!/usr/bin/env bash
# The demo on a fresh machine: set up, train and register two demo models, build the A/B
# image (smoke-tested), push it to the local registry, and start it by digest on port 3000.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PORT="${PORT:-3000}"
bash ci/setup.sh
BENTOSHIP=("$ROOT/.venv/bin/bentoship")

"${BENTOSHIP[@]}" demo train --if-missing
"${BENTOSHIP[@]}" build --model demo-classifier@champion --treatment demo-classifier@challenger \
    --push --output json > .bentoship/last-build.json
PINNED="$("$ROOT/.venv/bin/python" -c 'import json,sys; print(json.load(open(sys.argv[1]))["pinned"])' .bentoship/last-build.json)"
TAG="$("$ROOT/.venv/bin/python" -c 'import json,sys; print(json.load(open(sys.argv[1]))["image"])' .bentoship/last-build.json)"
echo "Image tag:    $TAG"
echo "Image digest: $PINNED"
docker rm -f bentoship-demo >/dev/null 2>&1 || true
"${BENTOSHIP[@]}" run "$PINNED" --name bentoship-demo --port "$PORT"
