"""Benchmarks: whole workloads, timed end to end, their API calls counted on ``/_local/stats``.

``python -m bench`` (``make bench``): arkerfs side by side with sshfs through a delay proxy
(sidebyside.py, targets.py, workloads.py, proxy.py). ``python -m bench tables [--latency-ms N]``:
the older per-operation tables at injected latency (client_ops.py, mount_ops.py).
"""
