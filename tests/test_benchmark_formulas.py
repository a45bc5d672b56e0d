"""The arithmetic of the benchmark scripts that RESULTS.md quotes, against hand computation.

The scripts live in ``benchmarks/`` (not a package) and set JAX up on import, so each check
runs in a fresh interpreter.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def call(module: str, expression: str) -> object:
    """``expression`` evaluated after ``from MODULE import *`` in a fresh interpreter."""
    code = (f"import json, sys; sys.path.insert(0, {str(BENCHMARKS)!r}); "
            f"from {module} import *; print(json.dumps({expression}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=BENCHMARKS).stdout
    return json.loads(out.strip().splitlines()[-1])


def test_the_floor_fraction_counts_every_seed_of_the_vmapped_call() -> None:
    # update_floor.py's 2.0 ms is one seed's share of a 4-seed call (the call takes 8 ms per
    # minibatch). 5 epochs x 4 minibatches: an iteration of the 4 seeds takes 5 x 4 x 8 ms =
    # 0.16 s and gives each seed 1,000 steps: 6,250 steps/s per seed; 25 of them is 0.004.
    # The slip this guards against took the floor as 1,000 / (5 x 4 x 2 ms) = 25,000.
    result = call("native_throughput", "floor_fraction("
                  "[{'num_seeds': 4, 'ms_per_seed_minibatch': 2.0}, "
                  " {'num_seeds': 1, 'ms_per_seed_minibatch': 1.0}], "
                  "[{'batch_per_seed': 1000, 'minibatches': 4, 'sps_per_seed': 25.0}], 5, 4)")
    assert result["floor_sps_per_seed"] == 6250.0
    assert result["floor_fraction"] == 25.0 / 6250.0
    one = call("native_throughput", "floor_fraction("
               "[{'num_seeds': 1, 'ms_per_seed_minibatch': 1.0}], "
               "[{'batch_per_seed': 1000, 'minibatches': 4, 'sps_per_seed': 25.0}], 5, 1)")
    assert one["floor_sps_per_seed"] == 50000.0  # 1,000 / (5 x 4 x 1 ms)
