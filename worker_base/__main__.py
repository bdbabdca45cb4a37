"""``python3 -m worker_base``: the entrypoint of a worker container.

In a container it runs isolated (``python3 -I``, from ``/``, ``HOME=/root``:
``worker_manager.images.spec.RUNTIME``); as root beside an agent of another user it checks so
before anything else (``worker_base.isolation``) and refuses to start otherwise.

Exit codes: 0 after SIGTERM/SIGINT, 2 when the environment does not describe a usable worker
(the message names the variable) or the interpreter would read what the agent may write, 1 on an
unexpected error (with its traceback in the log).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import threading

from worker_base import __version__, forks
from worker_base.agents.registry import DriverUnavailableError, driver_for
from worker_base.assignment import AssignmentError, wait_for_assignment
from worker_base.config import ConfigError, WrapperConfig
from worker_base.identity import AgentIdentity, prepare, private_dir
from worker_base.isolation import wrapper_exposures
from worker_base.wrapper import Wrapper

log = logging.getLogger("worker_base")


def main() -> int:
    # Plain lines on stderr: that is the container log. Nothing here prints the Redis URL
    # unredacted, nor the agent's environment.
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.INFO,
        format="%(asctime)s %(levelname)s worker_base: %(message)s",
    )
    stop = _stop_flag()
    try:
        if not wait_for_assignment(os.environ, stopped=stop.is_set):
            log.info("stopped while pooled, before any assignment")
            return 0
    except AssignmentError as exc:
        log.error("cannot start: %s", exc)
        return 2
    try:
        config = WrapperConfig.from_env(os.environ)
    except ConfigError as exc:
        log.error("cannot start: %s", exc)
        return 2
    logging.getLogger().setLevel(config.log_level if config.log_level in _LEVELS else "INFO")
    identity = AgentIdentity.of(config)
    exposed = wrapper_exposures() if identity.separate else []
    if exposed:
        # Root beside an agent: refuse to go on reading what the agent may write.
        log.error(
            "cannot start: the wrapper's interpreter reads what others may change: %s",
            "; ".join(exposed),
        )
        return 2
    try:
        prepare(config, identity)
        # A copy of another worker (SPEC §10) settles before its ledger and driver are read.
        forks.settle(private_dir(config))
    except OSError as exc:
        log.error("cannot start: the wrapper's or the agent's directories: %s", exc)
        return 2
    try:
        driver = driver_for(config)
    except DriverUnavailableError as exc:
        log.error("cannot start: %s", exc)
        return 2
    log.info(
        "worker_base %s starting: worker %s, agent %s (%s), redis %s",
        __version__,
        config.worker_id,
        config.agent_type,
        f"uid {identity.uid}" if identity.separate else "the wrapper's user",
        config.safe_redis_url,
    )
    try:
        return asyncio.run(Wrapper(config, driver).run())
    except Exception:
        log.exception("the wrapper failed")
        return 1


def _stop_flag() -> threading.Event:
    """Set by SIGTERM/SIGINT while a pooled wrapper waits (the asyncio handlers come later)."""
    flag = threading.Event()

    def handler(_signum: int, _frame: object) -> None:
        flag.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, handler)
    return flag


_LEVELS = frozenset({"DEBUG", "INFO", "WARNING", "ERROR"})

if __name__ == "__main__":
    sys.exit(main())
