"""Thin wrapper: `python benchmarks/run.py [options]` is `prunelab bench [options]`.

python benchmarks/run.py                     # full VGG, ~4-6 min on 2 cores
python benchmarks/run.py --width 0.25 --json runs/bench.json
python benchmarks/run.py --study             # adds the quick study end to end (slow)
"""

from __future__ import annotations

import sys

from prunelab.app.bench import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
