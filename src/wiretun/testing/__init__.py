"""Helpers for tests and benchmarks: network namespaces with guaranteed cleanup."""
