"""A service that ended while its worker ran (SPEC §9): said on the worker's output, kept in its
record.

Its worker goes on (the agent may not need it any more, or may start it again by other means);
the record's ``services`` says ``exited with code N`` and the worker's output gets an ``error``
event naming the service. Only a service the record shows ``running`` of a RUNNING worker is
reported: one stopped by a suspend or a delete (its worker is no longer RUNNING, and the record
already says ``stopped`` or ``removed``) is not an error, and the watcher's event and the
reconciler's listing of the same exit report it once.
"""

from __future__ import annotations

from worker_manager.contract.kinds import WorkerStatus
from worker_manager.services import plan
from worker_manager.workers.state.records import WorkerStore


def exit_message(name: str, exit_code: int | None, oom: bool = False) -> str:
    """The ``error`` event's content: a sentence, like the wrapper's own."""
    return f"service {name!r} {plan.exited(exit_code, oom)}"


async def service_ended(
    store: WorkerStore, worker_id: str, name: str, exit_code: int | None, oom: bool = False
) -> bool:
    """Record and report it; False when it was not a running service of a RUNNING worker."""
    return await store.service_states(
        worker_id,
        [name],
        plan.exited(exit_code, oom),
        only_while=WorkerStatus.RUNNING,
        only_from=plan.RUNNING,
        error=exit_message(name, exit_code, oom),
    )
