"""Benchmark harness of issue 7 (`make bench`); measurement only, never imported by the service."""
