"""Benchmarks: model cost (params, GMACs), throughput / memory / MFU, data loading, and the naive
reference implementation of AbSViT that the speed targets are measured against.

Run the scripts from the project root, e.g. ``python benchmarks/model_cost.py``; see
``docs/performance.md`` for the measured tables and the commands that made them.
"""
