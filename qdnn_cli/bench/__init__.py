"""Benchmarks, apart from the product: ``make bench`` (``python -m qdnn_cli.bench``) times
training steps side by side (:mod:`.steps`: per-mode, naive, compiled; :mod:`.batching`:
mode-batched steps and packed runs); :mod:`.concurrent` measures concurrent runs.
Nothing in qdnn imports this package."""
