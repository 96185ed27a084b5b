"""Tooling around the library: local deployments, the demo and benchmarks (docs/design.md §3)."""
