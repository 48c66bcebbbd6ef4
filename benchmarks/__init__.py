"""Benchmarks (not shipped): each measures a target beside a baseline run in the same process or machine."""
