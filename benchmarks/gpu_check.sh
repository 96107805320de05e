#!/bin/sh
# The GPU check (see benchmarks/gpu_check.py): from the checkout, no install, under 8 minutes.
cd "$(dirname "$0")/.." || exit 1
PYTHONPATH=. exec timeout 470 python3 benchmarks/gpu_check.py "$@"
