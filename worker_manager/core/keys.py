"""Every Redis key name the service uses, in one place, under one configurable prefix.

The prefix (``WM_KEY_PREFIX``) replaces ``worker`` everywhere so that several deployments, or
test sessions, can share one Redis without seeing each other's keys.

With tenants (SPEC §11) a tenant ``T``'s keys live in a namespace of their own,
``<prefix>:t:<T>``, while what belongs to the fleet (images, builds, GC, the managers and their
presence, the audit trail, the access and tenant registries) stays under the fleet's prefix:
``Keys(prefix, fleet)`` names both, so every component asks for a key by what it is and gets the
right one, and no component decides by itself what is shared.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from worker_base.config import team_board_key, team_changes_key, worker_key

#: The consumer group the managers share on the command stream (SPEC §1).
MANAGER_GROUP = "worker-manager"
#: The consumer group (and consumer) the wrapper reads its input stream with.
WRAPPER_GROUP = "wrapper"


#: Between the fleet's prefix and a tenant's name: ``worker:t:acme`` (SPEC §11).
TENANT_INFIX = "t"


def tenant_prefix(fleet_prefix: str, tenant: str) -> str:
    """The namespace of one tenant's keys."""
    return f"{fleet_prefix}:{TENANT_INFIX}:{tenant}"


@dataclass(frozen=True, slots=True)
class Keys:
    #: The namespace: the fleet's prefix, or a tenant's ``<fleet>:t:<tenant>``.
    prefix: str = "worker"
    #: The fleet's prefix when ``prefix`` is a tenant's (None: the namespace is the fleet's).
    fleet: str | None = None

    @property
    def fleet_prefix(self) -> str:
        return self.fleet or self.prefix

    @property
    def docker_prefix(self) -> str:
        """The namespace as Docker names allow it (``worker:t:acme`` -> ``worker-t-acme``):
        containers and volumes are named from it; their labels keep the namespace itself."""
        return self.prefix.replace(":", "-")

    def docker_name(self, worker_id: str) -> str:
        """A worker's container's name, ``<docker prefix>-<id>`` (its volumes add a suffix)."""
        return f"{self.docker_prefix}-{worker_id}"

    def snapshot_volume(self, name: str, part: str) -> str:
        """A snapshot's volume (``home`` or ``workspace``). In a tenant's namespace the name is
        a digest of the namespace and the snapshot's name: ``<tenant>-snap-<name>`` alone would
        be ambiguous between a tenant ``a`` with a snapshot ``x-snap-y`` and a tenant
        ``a-snap-x`` with a snapshot ``y``."""
        if not self.fleet:
            return f"{self.docker_prefix}-snap-{name}-{part}"
        digest = hashlib.sha256(f"{self.prefix}\n{name}".encode()).hexdigest()[:16]
        return f"{self.docker_prefix}-snap-{digest}-{part}"

    @property
    def id_salt(self) -> str:
        """A tenant's random salt (set once, by the first manager that needs it): what its
        workers' ids are derived from with a ``request_id``, so no other tenant can compute
        them (and take one first). No access user's pattern reaches it."""
        return f"{self.prefix}:id-salt"

    def for_tenant(self, tenant: str) -> Keys:
        """The keys of one tenant of this fleet."""
        return Keys(tenant_prefix(self.fleet_prefix, tenant), self.fleet_prefix)

    @property
    def tenants(self) -> str:
        """The tenants added with ``worker-manager tenants add``: name -> quotas (JSON)."""
        return f"{self.fleet_prefix}:tenants"

    def spend(self, day: str) -> str:
        """What this namespace's workers spent through the LLM gateway on one UTC day
        (``YYYY-MM-DD``), in USD: written by the gateway, read for ``max_cost_usd_per_day``."""
        return f"{self.prefix}:spend:{day}"

    # --- control plane -------------------------------------------------------------------
    @property
    def commands(self) -> str:
        return f"{self.prefix}:commands"

    @property
    def replies(self) -> str:
        """Default reply stream, and the prefix every ``reply_to`` must start with."""
        return f"{self.prefix}:replies"

    @property
    def dead(self) -> str:
        return f"{self.prefix}:dead"

    @property
    def index(self) -> str:
        return f"{self.prefix}:index"

    @property
    def lifecycle(self) -> str:
        return f"{self.prefix}:lifecycle"

    @property
    def images(self) -> str:
        return f"{self.fleet_prefix}:images"

    def image(self, image_hash: str) -> str:
        return f"{self.fleet_prefix}:image:{image_hash}"

    def request(self, request_id: str) -> str:
        """Idempotency record of one ``request_id``: in-flight marker, then the reply."""
        return f"{self.prefix}:request:{request_id}"

    def live(self, manager_id: str) -> str:
        """Set of one manager's workers that are STARTING or RUNNING (its capacity count)."""
        return f"{self.prefix}:live:{manager_id}"

    def mirror_used(self, mirror: str) -> str:
        """Set when a checkout used a repository's mirror; it expires after the workspace
        retention, and a mirror no worker refers to without it is removed."""
        return f"{self.prefix}:mirror-used:{mirror}"

    def suspended(self, manager_id: str) -> str:
        """Set of one manager's SUSPENDED workers (their volumes are on its host)."""
        return f"{self.prefix}:suspended:{manager_id}"

    def owner_live(self, owner: str) -> str:
        """Set of the live workers whose ``metadata.owner`` is ``owner`` (across managers)."""
        return f"{self.prefix}:live-owner:{owner}"

    def manager_commands(self, manager_id: str) -> str:
        """One manager's own command stream: commands about workers on its host."""
        return f"{self.prefix}:commands:{manager_id}"

    def producer_commands(self, producer: str) -> str:
        """A registered producer's own command stream (WM_PRODUCERS): only its ACL user may
        write it, so the manager knows who sent what is in it."""
        return f"{self.prefix}:producer:{producer}:commands"

    def producer_replies(self, producer: str) -> str:
        """The prefix of a registered producer's reply streams."""
        return f"{self.replies}:{producer}"

    def pool(self, manager_id: str, shape: str) -> str:
        """The ids of one manager's ready warm-pool workers of one shape (a set: SPOP takes one
        atomically, so two creates never get the same one)."""
        return f"{self.prefix}:pool:{manager_id}:{shape}"

    def pool_take(self, request_id: str) -> str:
        """Which pooled worker a create took, so its redelivery takes the same one."""
        return f"{self.prefix}:pool-take:{request_id}"

    @property
    def snapshots(self) -> str:
        """Sorted set of snapshot names, scored by when each was last used (SPEC §10)."""
        return f"{self.prefix}:snapshots"

    def snapshot(self, name: str) -> str:
        """One snapshot's record (hash): its source, shape, spec, host, size, times."""
        return f"{self.prefix}:snapshot:{name}"

    @property
    def grants(self) -> str:
        """Sorted set of the grants' Redis users, scored by when each expires (SPEC §11)."""
        return f"{self.prefix}:grants"

    def worker_grants(self, worker_id: str) -> str:
        """The set of one worker's grants' Redis users (revoked with the worker)."""
        return f"{self.prefix}:grants:{worker_id}"

    @property
    def audit(self) -> str:
        """Every command handled and console action (SPEC §11): the operator's alone."""
        return f"{self.fleet_prefix}:audit"

    @property
    def access(self) -> str:
        """The access users made with ``worker-manager access add``: name -> role (no secret)."""
        return f"{self.fleet_prefix}:access"

    def access_user(self, name: str) -> str:
        """An access user's Redis user name (never a worker's, a grant's or a producer's)."""
        return f"{self.fleet_prefix}-access-{name}"

    def build_lock(self, image_hash: str) -> str:
        return f"{self.fleet_prefix}:lock:build:{image_hash}"

    def build_failure(self, image_hash: str) -> str:
        return f"{self.fleet_prefix}:build-failed:{image_hash}"

    @property
    def gc_lock(self) -> str:
        return f"{self.fleet_prefix}:lock:gc"

    @property
    def gc_last_run(self) -> str:
        """Unix time of the last collection, so N managers collect about once per interval."""
        return f"{self.fleet_prefix}:gc:last-run"

    @property
    def managers(self) -> str:
        """The ids of the managers that have announced themselves (a dead one is dropped once
        none of its workers is left to judge: ``workers.fleet.lost_hosts``)."""
        return f"{self.fleet_prefix}:managers"

    def manager(self, manager_id: str) -> str:
        """Presence key of one manager process (refreshed while it runs)."""
        return f"{self.fleet_prefix}:manager:{manager_id}"

    def manager_wait(self, manager_id: str) -> str:
        """The marker one manager writes before ``WAIT`` (``core.durability``); it expires."""
        return f"{self.fleet_prefix}:wait:{manager_id}"

    # --- teams (SPEC §12) ------------------------------------------------------------------
    def team_board(self, team: str) -> str:
        """A team's board: written by the manager and the team's wrappers only."""
        return team_board_key(self.prefix, team)

    def team_changes(self, team: str) -> str:
        """Hash of the members' changed paths: where their conflicts are found, and what
        ``wm-team who`` shows of each."""
        return team_changes_key(self.prefix, team)

    def repository_changes(self, repository_digest: str) -> str:
        """Hash of the changed paths of the live workers of one repository (by its URL's
        digest): where their conflicts are found (SPEC §8)."""
        return f"{self.prefix}:changes:{repository_digest}"

    def team_members(self, team: str) -> str:
        """The set of a team's live members; once empty, the board expires."""
        return f"{self.prefix}:team:{team}:members"

    # --- one worker ----------------------------------------------------------------------
    def worker(self, worker_id: str) -> str:
        return f"{self.prefix}:{worker_id}"

    def spec(self, worker_id: str) -> str:
        """The accepted create as saved (``contract.create_spec``): kept while the worker lives
        (a resume provisions it again from here), deleted when it ends."""
        return f"{self.prefix}:{worker_id}:spec"

    def prompt(self, worker_id: str) -> str:
        """The create's initial prompt, moved to the input stream when the worker is RUNNING."""
        return f"{self.prefix}:{worker_id}:prompt"

    def input(self, worker_id: str) -> str:
        return worker_key(self.prefix, worker_id, "input")

    def output(self, worker_id: str) -> str:
        return worker_key(self.prefix, worker_id, "output")

    def heartbeat(self, worker_id: str) -> str:
        return worker_key(self.prefix, worker_id, "heartbeat")

    def evidence(self, worker_id: str) -> str:
        """Why and how a worker ended (``workers.state.evidence``), kept ``WM_EVIDENCE_DAYS``."""
        return worker_key(self.prefix, worker_id, "evidence")

    def workspace(self, worker_id: str) -> str:
        """The worker's last workspace summary (SPEC §8), set by its wrapper."""
        return worker_key(self.prefix, worker_id, "workspace")

    def usage(self, worker_id: str) -> str:
        """What the LLM gateway metered for one worker (hash: tokens and ``cost_usd``); written
        by the gateway only, never reachable by the worker's own Redis user."""
        return f"{self.prefix}:{worker_id}:usage"

    def acl_user(self, worker_id: str) -> str:
        return f"{self.prefix}-{worker_id}"
