"""Benchmarks behind `rgm bench`: speed targets are measured here, never in unit tests."""
