"""Benchmarks of kubestep's hot paths; `make bench` prints their figures."""
