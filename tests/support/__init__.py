"""Shared test infrastructure: a private redis-server, Docker clean-up and the availability rule.

Fixtures live in ``tests/conftest.py``; the pieces here are plain objects so that benchmarks and
helper scripts can use them outside pytest too.
"""
