"""The worker wrapper: the entrypoint of every worker container (``python3 -m worker_base``).

It reads the worker's input stream, runs the agent once per input and streams what the agent
prints into the output stream (SPEC §4). It runs on the image's Debian python3 with only redis-py
(pure-python) beside it, so it must not import anything from ``worker_manager``.
"""

__version__ = "0.1.0"
