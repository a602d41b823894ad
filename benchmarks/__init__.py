"""Benchmarks: speed and quality figures, printed; run all with `python -m benchmarks` (or `make bench`)."""
