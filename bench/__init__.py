"""Benchmarks: whole workloads against the local server with injected latency.

Each workload is timed end to end and its API calls are counted on the server's
``/_local/stats`` endpoint. Run with ``make bench`` or ``python -m bench [--latency-ms N]``.
"""
