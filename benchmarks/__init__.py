"""worker-manager against its physical limits: ``python -m benchmarks [--quick]``."""
