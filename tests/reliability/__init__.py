"""Reliability suite: faults, crash safety, load, signals and bad input (see docs/reliability.md)."""
