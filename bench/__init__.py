"""Benchmarks, each run as a script from the repository root (see the Makefile's bench target)."""
