"""How a worker ends (or sleeps): the one place that does it, and the rule that reads an exit code.

Ending a worker is always the same sequence, whoever decides it (a delete, the watcher, the
evictor, the output guard, the reconciler, a failed create):

1. its record changes in one Lua transition (``WorkerStore.transition``): a concurrent end wins
   or loses cleanly, and the lifecycle stream and the worker's output say so;
2. its create, if one is still running in this process, is cancelled;
3. its services' containers, its container and its Redis ACL user are removed (the services
   first: they live in its container's network namespace);
4. the exit code the container reported is recorded.

Steps 2-4 run in the background unless the caller waits for them (a delete answers once the
container is gone): a slow ``docker stop`` must delay no other verdict. A teardown cut short (a
crash) is finished by the reconciler, which finds the container of an ended record.

:func:`outcome_of` is the rule that turns a container's exit (code, OOM-killed) into a status
and a reason; the Docker events and the reconciler's inspection both use it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from worker_manager.contract.kinds import LIVE_STATUSES, WorkerStatus
from worker_manager.contract.reasons import EndReason, exit_reason, is_end_reason
from worker_manager.core.logs import get_logger
from worker_manager.services.plan import STOPPED
from worker_manager.services.runtime import ServiceRuntime
from worker_manager.workers.resources.acl import WorkerAcl
from worker_manager.workers.resources.containers import ContainerRuntime
from worker_manager.workers.resources.containment import Containment
from worker_manager.workers.resources.grants import WorkerGrants
from worker_manager.workers.resources.tasks import WorkerTasks
from worker_manager.workers.state.evidence import EvidenceBook
from worker_manager.workers.state.records import WorkerStore

log = get_logger(__name__)


@dataclass(frozen=True, slots=True)
class Outcome:
    """How a worker ended: why (one of ``contract.reasons``' ending reasons, which also says
    STOPPED or FAILED and who gives it), and what it reported.

    A free string is refused here (mypy, and at run time): a reason no part of the service
    owns would reach the record, the lifecycle stream and the evidence unexplained."""

    reason: EndReason
    exit_code: int | None = None
    #: Other record fields written in the same transition (the last heartbeat's facts).
    fields: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not is_end_reason(self.reason):
            raise TypeError(
                f"an ending reason of contract.reasons, not {self.reason!r} "
                f"({type(self.reason).__name__})"
            )

    @property
    def status(self) -> WorkerStatus:
        """STOPPED or FAILED, as the reason says."""
        return self.reason.status

    def record_fields(self) -> dict[str, str]:
        written = dict(self.fields)
        if self.exit_code is not None:
            written["exit_code"] = str(self.exit_code)
        return written


def outcome_of(exit_code: int, oom: bool) -> Outcome:
    """A container's end: OOM-killed is FAILED ``oom``, 0 is STOPPED ``exited``, anything else
    FAILED ``exited with code N`` (``contract.reasons.exit_reason``); the exit code is recorded
    in every case."""
    return Outcome(exit_reason(exit_code, oom), exit_code)


class Lifecycle:
    """The only code that ends workers (:meth:`end`) and removes what they leave
    (:meth:`finish`, or :meth:`put_to_sleep` for a suspended one, which keeps its volumes)."""

    def __init__(
        self,
        store: WorkerStore,
        containers: ContainerRuntime,
        acl: WorkerAcl,
        creates: WorkerTasks,
        containment: Containment,
        evidence: EvidenceBook | None = None,
        services: ServiceRuntime | None = None,
        grants: WorkerGrants | None = None,
    ) -> None:
        self._store = store
        self._grants = grants
        self._services = services
        self._containers = containers
        self._acl = acl
        self._containment = containment
        self._creates = creates
        self._evidence = evidence
        self._teardowns = WorkerTasks("end")

    @property
    def teardowns_in_progress(self) -> int:
        return len(self._teardowns)

    async def end(
        self,
        worker_id: str,
        outcome: Outcome,
        *,
        allowed_from: Sequence[WorkerStatus] = LIVE_STATUSES,
        wait: bool = False,
        on_this_host: bool = True,
        only_if_owner_gone: bool = False,
        by: str | None = None,
    ) -> bool:
        """End the worker if its status is one of ``allowed_from``; True when this call did.

        ``wait``: return once the container and Redis user are gone, and tear down even when
        the worker had already ended (a delete makes sure). ``on_this_host=False``: the
        container is another manager's (which is gone), so only the Redis user is removed here
        (when this call ended it, or ``wait``); that manager's reconciler removes the container
        when it returns.
        ``only_if_owner_gone``: the transition happens only while that manager's presence key
        and the worker's heartbeat are both absent (``workers.fleet.lost_hosts``).
        ``by``: who ended it, for the evidence, when the caller can say more than the reason's
        own source (a delete's request id, the judging manager).
        """
        result = await self._store.transition(
            worker_id,
            outcome.status,
            outcome.reason,
            fields=outcome.record_fields(),
            allowed_from=allowed_from,
            only_if_owner_gone=only_if_owner_gone,
        )
        if not on_this_host and (result.changed or wait):
            # First: a wrapper on the lost host that wakes must not speak for the worker.
            # Its grant is at the other host's egress service (and ends with that host).
            await self._acl.delete(worker_id)
        if result.changed:
            log.info(
                "worker ended",
                worker_id=worker_id,
                status=outcome.status,
                reason=str(outcome.reason),
            )
            if on_this_host and not wait:  # at once: nothing written after this delays it
                self._teardowns.start(worker_id, lambda: self._finish_logged(worker_id))
            if self._evidence is not None:
                await self._evidence.verdict(
                    worker_id, outcome.reason, outcome.exit_code, by or outcome.reason.source
                )
        elif outcome.exit_code is not None:
            # Already ended (a delete came first): keep the exit code the container reported.
            await self._store.update(worker_id, {"exit_code": str(outcome.exit_code)})
        # Not on this host: its container is its own manager's to remove (its reconciler, when
        # it returns).
        if on_this_host and wait:
            await self.finish(worker_id)
        return result.changed

    async def finish(self, worker_id: str) -> None:
        """Cancel the worker's create, remove its container and Redis user, and record the exit
        code. Idempotent: also for a container whose record is gone (an orphan)."""
        await self._creates.cancel(worker_id)
        words = await self._containers.last_words(worker_id) if self._evidence else None
        exit_code = await self.remove(worker_id)
        if exit_code is not None:
            await self._store.update(worker_id, {"exit_code": str(exit_code)})
        if words is not None and self._evidence is not None:
            secrets = [self._acl.password(worker_id), *self._containment.worker_secrets(worker_id)]
            await self._evidence.last_words(worker_id, words, secrets)

    async def remove(self, worker_id: str) -> int | None:
        """Stop and remove the container, the Redis user and the egress grant; the container's
        exit code if any."""
        await self._remove_services(worker_id, "removed")
        exit_code = await self._containers.remove(worker_id)
        await self._acl.delete(worker_id)
        if self._grants is not None:  # a grant lives until its worker is deleted (SPEC §11)
            await self._grants.revoke_worker(worker_id)
        await self._containment.release(worker_id)
        return exit_code

    async def put_to_sleep(self, worker_id: str) -> None:
        """What a suspend removes (SPEC §8): the container, the Redis user and the egress
        grant; the volumes stay. Idempotent (the reconciler finishes one cut short)."""
        await self._creates.cancel(worker_id)
        await self._remove_services(worker_id, STOPPED)
        await self._containers.remove(worker_id, keep_volumes=True)
        await self._acl.delete(worker_id)
        await self._containment.release(worker_id)

    async def _remove_services(self, worker_id: str, state: str) -> None:
        """Its services' containers (their volumes are the worker's: kept or removed with its
        own), and the record says so of each."""
        if self._services is None:
            return
        removed = await self._services.remove(worker_id)
        if removed:
            await self._store.service_states(worker_id, [n for n in removed if n], state)

    async def _finish_logged(self, worker_id: str) -> None:
        try:
            await self.finish(worker_id)
        except Exception:
            # Not lost: the reconciler removes the container of an ended record.
            log.exception("removing an ended worker failed", worker_id=worker_id)

    async def close(self) -> None:
        """A teardown cut short here is finished by the reconciler at the next start: the
        record already says STOPPED/FAILED, so the container it finds is removed."""
        await self._teardowns.close()
