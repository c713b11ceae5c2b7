"""Latency: the per-layer latency table (schema, build, predict), host measurement, and the standalone device runner."""
