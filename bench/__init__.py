"""Benchmarks of the proxy against a fake upstream and a bare pass-through.

`python -m bench.proxy_overhead` (`make bench`) runs the full comparison;
docs/benchmarks.md describes it and records results.
"""
