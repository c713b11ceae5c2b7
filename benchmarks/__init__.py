"""edgeprune benchmarks: ``python -m benchmarks.run_all`` (see benchmarks/RESULTS.md for the last results)."""
