"""Inference time and peak memory per event vs hits for the tracking app (thin wrapper of its ``scale`` verb).

    OMP_NUM_THREADS=1 .venv/bin/python -m tools.tracking_scaling --config apps/tracking/configs/full.yaml \
        --hits 2000 5000 10000 25000 50000 100000
"""

from __future__ import annotations

import sys

from apps.tracking.__main__ import main

if __name__ == "__main__":
    sys.exit(main(["scale", *sys.argv[1:]]))
