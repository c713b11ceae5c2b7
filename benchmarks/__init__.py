"""edgeprune benchmarks: ``python -m benchmarks.run_all`` measures, ``python -m benchmarks.report`` writes RESULTS.md."""
