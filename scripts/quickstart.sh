#!/usr/bin/env bash
# Set everything up and run the main job on the embedded default task:
#   edgeprune build --profile raspberrypi4   (extra arguments are passed to `edgeprune build`)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh .venv
exec .venv/bin/edgeprune build --profile "${PROFILE:-raspberrypi4}" "$@"
