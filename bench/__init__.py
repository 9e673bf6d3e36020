"""ztgate's benchmark harness: ``python -m bench`` (see bench/README.md and docs/performance.md)."""
