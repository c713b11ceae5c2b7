"""edgeprune benchmarks: ``python -m benchmarks.run_all`` measures; ``benchmarks.report`` rewrites RESULTS.md."""
