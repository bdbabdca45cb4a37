"""The worker wrapper (worker_base): real processes against a real redis-server."""
