"""The console's routes (mounted under ``/ui`` by ``service.http`` when ``WM_UI_TOKEN`` is set).

Reads go to Redis (records, the lifecycle stream, a worker's output, evidence, presence, dead
letters); actions go where any producer's go: Send and Cancel are entries on the worker's input
stream, Delete is a ``delete`` command on the command stream, answered by whichever manager owns
the worker. Live views are server-sent events read from the streams with ``XREAD BLOCK`` and
resumable (``Last-Event-ID``, or ``after``), never a poll per worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from urllib.parse import quote

from aiohttp import web
from redis.asyncio import Redis
from redis.exceptions import RedisError

from worker_manager.client.requests import CommandClient
from worker_manager.console import session, views
from worker_manager.console.throttle import SignInThrottle, client_key
from worker_manager.contract.audit import audit_entry
from worker_manager.contract.commands import normalize_uuid
from worker_manager.contract.record import WorkerRecord
from worker_manager.contract.teams import BoardEntry, Member, check_team_name, members
from worker_manager.contract.tenants import TENANT_RE
from worker_manager.core.keys import Keys

#: The newest workers the fleet page lists, and a worker page's output and lifecycle history.
FLEET_ROWS = 500
OUTPUT_HISTORY = 500
LIFECYCLE_SCAN = 5000
SSE_BLOCK_MS = 15_000
#: A team page's board history, and the changed files it shows per member.
BOARD_ROWS = 1000
MEMBER_FILES = 50

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


#: Who the console's token signs in (the operator, fleet-wide): the trail's ``sender``.
OPERATOR = "console:operator"
OPERATOR_ROLE = "operator"
#: Where the middleware leaves who signed in (``""``: the operator) and their role.
USER_KEY = web.RequestKey("wm_user", str)
ROLE_KEY = web.RequestKey("wm_role", str)
#: The tenant whose namespace a request sees (``""``: the default one): an access user's own,
#: or the one the operator chose (``/ui/view?tenant=T``, kept in :data:`VIEW_COOKIE`).
TENANT_KEY = web.RequestKey("wm_tenant", str)
VIEW_COOKIE = "wm_view"
#: The console's entries keep the trail bounded like the managers' (``WM_AUDIT_MAXLEN``'s
#: default).
AUDIT_MAXLEN = 100_000


class Console:
    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        token: str,
        *,
        image_max_age_days: float = 7.0,
        secure_cookie: str = "auto",
        throttle: SignInThrottle | None = None,
        tenants: Callable[[], Sequence[str]] = tuple,
    ) -> None:
        """``tenants``: the tenants the managers serve (SPEC §11), which the operator may look
        at one at a time (an access user of a tenant sees that tenant only)."""
        self._tenants = tenants
        self._redis = redis
        self._keys = keys
        self._token = token
        self._image_max_age = image_max_age_days * 86_400
        self._commands = CommandClient(redis, keys, producer=None)
        self._secure_cookie = secure_cookie
        self._throttle = throttle or SignInThrottle()
        self._public: frozenset[web.AbstractResource] = frozenset()
        #: Access users signed in to this process, who act as themselves (never written down).
        self._passwords: dict[str, str] = {}

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._auth])
        login = app.router.add_resource("/login", name="login")
        login.add_route("GET", self._login_form)
        login.add_route("POST", self._login)
        # The routes anyone may reach, by the route aiohttp matched, never by how the path is
        # spelt: ``/workers/x%2Flogin`` is the worker route (its id ``x/login``), not the login.
        self._public = frozenset({login})
        app.router.add_get("/", self._fleet)
        app.router.add_get("/rows", self._rows)
        app.router.add_get("/events", self._lifecycle_events)
        app.router.add_get("/workers/{worker_id}", self._worker)
        app.router.add_get("/workers/{worker_id}/output", self._output_events)
        app.router.add_post(
            "/workers/{worker_id}/{action:send|cancel|delete|fork|snapshot}", self._act
        )
        app.router.add_get("/teams/{team}", self._team)
        app.router.add_get("/teams/{team}/events", self._board_events)
        app.router.add_post("/teams/{team}/post", self._post_to_team)
        app.router.add_get("/snapshots", self._snapshots)
        app.router.add_get("/audit", self._audit)
        app.router.add_get("/view", self._view)
        return app

    # --- who may look ------------------------------------------------------------------------
    @web.middleware
    async def _auth(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.match_info.route.resource in self._public:
            return await handler(request)
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "bearer":
            # A bearer token is a sign-in too: as throttled as the form, or it would be the
            # guesser's way round it.
            self._check_throttle(request)
            if session.valid_token(self._token, given):
                self._throttle.succeeded(_client(request))
                request[TENANT_KEY] = _chosen_tenant(request)
                return await handler(request)
            self._throttle.failed(_client(request), time.time())
            raise web.HTTPUnauthorized(text="that bearer token is not it\n")
        cookie = request.cookies.get(session.COOKIE)
        user = session.session_user(self._token, cookie, time.time())
        if user is not None:
            found = await self._role(user)
            if found is None:  # removed since it signed in (``access remove``)
                raise web.HTTPUnauthorized(text="that user no longer exists; sign in again\n")
            role, tenant = found
            request[USER_KEY], request[ROLE_KEY] = user, role
            # An access user sees its own tenant whatever it asks; the operator the one chosen.
            request[TENANT_KEY] = tenant if role != OPERATOR_ROLE else _chosen_tenant(request)
            if request.method == "POST":
                form = await request.post()
                if not session.valid_csrf(self._token, cookie, str(form.get("csrf", ""))):
                    raise web.HTTPForbidden(text="a form of this console is needed (CSRF)\n")
                if role == "viewer":
                    raise web.HTTPForbidden(text="a viewer acts on nothing\n")
            if role != OPERATOR_ROLE and request.path.rstrip("/").endswith("/audit"):
                raise web.HTTPForbidden(text="the audit trail is the operator's\n")
            return await handler(request)
        if request.method == "GET" and "text/html" in request.headers.get("Accept", ""):
            raise web.HTTPSeeOther("/ui/login")
        raise web.HTTPUnauthorized(text="sign in at /ui/login, or send a bearer token\n")

    def _check_throttle(self, request: web.Request) -> None:
        """429 with ``Retry-After`` while this client (or everyone) must wait after failures;
        decided before the token is looked at."""
        wait = self._throttle.retry_after(_client(request), time.time())
        if wait:
            raise web.HTTPTooManyRequests(
                headers={"Retry-After": str(wait)},
                text=f"too many failed sign-ins: try again in {wait} s\n",
            )

    async def _login_form(self, request: web.Request) -> web.Response:
        return _html(views.login_page(failed=False))

    async def _login(self, request: web.Request) -> web.Response:
        # The form is read first, and then checked, judged and counted with no ``await`` in
        # between: a guess checked before its body came in would pass the check with every
        # other guess sent in parallel, before any of their failures was counted.
        form = await request.post()
        self._check_throttle(request)
        name = str(form.get("username", "")).strip()
        if name:
            signed_in = await self._access_user_signs_in(name, str(form.get("password", "")))
        else:
            signed_in = session.valid_token(self._token, str(form.get("token", "")))
        if not signed_in:
            self._throttle.failed(_client(request), time.time())
            return _html(views.login_page(failed=True), status=401)
        self._throttle.succeeded(_client(request))
        response = web.HTTPSeeOther("/ui/")
        response.set_cookie(
            session.COOKIE,
            session.new_session(self._token, time.time(), name),
            max_age=session.SESSION_SECONDS,
            path="/ui",
            httponly=True,
            samesite="Strict",
            secure=session.secure_cookie(
                self._secure_cookie,
                tls=request.secure,
                forwarded_proto=request.headers.getall("X-Forwarded-Proto", []),
                forwarded=request.headers.getall("Forwarded", []),
            ),
        )
        raise response

    async def _role(self, user: str) -> tuple[str, str] | None:
        """``operator`` for the token's sessions, else the access user's role and tenant
        (``""``: the default namespace); None: gone."""
        if not user:
            return OPERATOR_ROLE, ""
        entry = await self._redis.hget(self._keys.access, user)
        try:
            data = json.loads(entry) if entry else {}
            role, tenant = data.get("role"), str(data.get("tenant") or "")
        except (ValueError, AttributeError):
            return None
        if role not in ("viewer", "producer") or (tenant and not TENANT_RE.fullmatch(tenant)):
            return None
        return str(role), tenant

    def _keys_of(self, request: web.Request) -> Keys:
        """The keys of the namespace this request sees (fleet keys stay the fleet's)."""
        tenant = request.get(TENANT_KEY, "")
        return self._keys.for_tenant(tenant) if tenant else self._keys

    async def _view(self, request: web.Request) -> web.Response:
        """The operator chooses the namespace the console shows (an access user cannot)."""
        if request.get(ROLE_KEY, OPERATOR_ROLE) != OPERATOR_ROLE:
            raise web.HTTPForbidden(text="an access user sees its own tenant only\n")
        tenant = request.query.get("tenant", "")
        if tenant and tenant not in self._tenants():
            raise web.HTTPNotFound(text="no such tenant\n")
        response = web.HTTPSeeOther("/ui/")
        response.set_cookie(
            VIEW_COOKIE, tenant, path="/ui", httponly=True, samesite="Strict", max_age=86_400
        )
        raise response

    async def _access_user_signs_in(self, name: str, password: str) -> bool:
        """Redis itself checks the password: a connection as that user must authenticate."""
        if not session.USER.fullmatch(name) or not password or await self._role(name) is None:
            return False
        client = self._as_user(name, password)
        try:
            await client.ping()
        except RedisError:
            return False
        finally:
            await client.aclose()
        self._passwords[name] = password  # this process's memory only: it acts as that user
        return True

    def _as_user(self, name: str, password: str) -> Redis:
        kwargs = self._redis.connection_pool.connection_kwargs
        return Redis(
            host=kwargs.get("host", "localhost"),
            port=kwargs.get("port", 6379),
            db=kwargs.get("db", 0),
            username=self._keys.access_user(name),
            password=password,
            decode_responses=True,
            socket_timeout=10,
        )

    def _acting(self, request: web.Request) -> tuple[CommandClient, Redis | None]:
        """The command client an action goes through: the operator's, or a producer's own (its
        own stream and replies, as its Redis user)."""
        user = request.get(USER_KEY, "")
        keys = self._keys_of(request)
        if not user:
            if keys == self._keys:
                return self._commands, None
            return CommandClient(self._redis, keys, producer=None), None
        password = self._passwords.get(user)
        if password is None:
            raise web.HTTPUnauthorized(text="sign in again to act\n")
        client = self._as_user(user, password)
        # A tenant's producer writes its tenant's command stream; the default namespace's its
        # own registered stream.
        producer = None if request.get(TENANT_KEY, "") else user
        return CommandClient(client, keys, producer=producer), client

    # --- pages -------------------------------------------------------------------------------
    async def _fleet(self, request: web.Request) -> web.Response:
        status, selector = _filters(request)
        keys = self._keys_of(request)
        operator = request.get(ROLE_KEY, OPERATOR_ROLE) == OPERATOR_ROLE
        records = await self._records(keys)
        counts = Counter(r.text("status") for r in records)
        shown = _filtered(records, status, selector)
        # The fleet's managers and images are the operator's to see, not a tenant's.
        ids = sorted(await self._redis.smembers(self._keys.managers)) if operator else []
        presence = await self._redis.mget([self._keys.manager(m) for m in ids]) if ids else []
        managers = [(m, p or "gone") for m, p in zip(ids, presence, strict=True)]
        dead = await self._redis.xrevrange(keys.dead, count=10)
        html = views.fleet_page(
            shown,
            counts,
            managers,
            dead,
            await self._images() if operator else [],
            status=status,
            selector=selector,
            now=time.time(),
            tenant=request.get(TENANT_KEY, ""),
            tenants=list(self._tenants()) if operator else None,
        )
        return _html(html)

    async def _rows(self, request: web.Request) -> web.Response:
        status, selector = _filters(request)
        shown = _filtered(await self._records(self._keys_of(request)), status, selector)
        return _html(views.rows(shown, time.time()))

    async def _worker(self, request: web.Request) -> web.Response:
        worker_id = _worker_id(request)
        keys = self._keys_of(request)
        values = await self._redis.hgetall(keys.worker(worker_id))
        record = WorkerRecord.from_hash(worker_id, values)
        if record is None:
            raise web.HTTPNotFound(text=f"no worker {worker_id}\n")
        changes = [
            f
            for _i, f in await self._redis.xrevrange(keys.lifecycle, count=LIFECYCLE_SCAN)
            if f.get("worker_id") == worker_id
        ][::-1]
        output = (await self._redis.xrevrange(keys.output(worker_id), count=OUTPUT_HISTORY))[::-1]
        evidence = await self._redis.hgetall(keys.evidence(worker_id))
        cookie = request.cookies.get(session.COOKIE, "")
        html = views.worker_page(
            record,
            changes,
            output,
            evidence,
            csrf=session.csrf_for(self._token, cookie),
            can_act=request.get(ROLE_KEY) != "viewer",
        )
        return _html(html)

    async def _act(self, request: web.Request) -> web.Response:
        worker_id = _worker_id(request)
        action = request.match_info["action"]
        if not await self._redis.exists(self._keys_of(request).worker(worker_id)):
            raise web.HTTPNotFound(text=f"no worker {worker_id}\n")
        form = await request.post()
        user = request.get(USER_KEY, "")
        # The console's own entry in the trail (the command it sends is audited as any is).
        sender = f"console:{user}" if user else OPERATOR
        entry = audit_entry(
            {"command": action, "worker_id": worker_id},
            "console",
            sender=sender,
            tenant=request.get(TENANT_KEY, ""),
        )
        await self._redis.xadd(self._keys.audit, entry, maxlen=AUDIT_MAXLEN, approximate=True)
        commands, own = self._acting(request)
        try:
            if action == "send":
                content = str(form.get("content", ""))
                if content:
                    await commands.send_input(worker_id, content)
            elif action == "cancel":
                await commands.send_input(worker_id, "", "cancel")
            elif action in ("fork", "snapshot"):
                raise await self._copy(commands, worker_id, action, form)
            else:
                reply = await commands.request(
                    "delete", worker_id=worker_id, request_id=f"ui-{uuid.uuid4().hex}", timeout=120
                )
                if not reply.ok:
                    raise web.HTTPConflict(text=f"{reply.error}: {reply.message}\n")
        finally:
            if own is not None:
                await own.aclose()
        raise web.HTTPSeeOther(f"/ui/workers/{worker_id}")

    async def _copy(
        self, commands: CommandClient, worker_id: str, action: str, form: Mapping[str, object]
    ) -> web.HTTPException:
        """A fork (to the first copy's page) or a snapshot (to the list), as any producer sends
        them; a refusal is shown as the manager worded it."""
        fields: dict[str, str] = {"worker_id": worker_id, "request_id": f"ui-{uuid.uuid4().hex}"}
        if action == "fork":
            count = str(form.get("count", "1"))
            fields["count"] = count if count.isdigit() else "1"
        else:
            fields["name"] = str(form.get("name", ""))
        reply = await commands.request(action, timeout=120, **fields)
        if not reply.ok:
            return web.HTTPConflict(text=f"{reply.error}: {reply.message}\n")
        if action == "fork" and reply.worker_ids:
            return web.HTTPSeeOther(f"/ui/workers/{reply.worker_ids[0]}")
        return web.HTTPSeeOther("/ui/snapshots")

    async def _team(self, request: web.Request) -> web.Response:
        """A team (SPEC §12): its members as its board and their records tell, the board."""
        team = _team_name(request)
        keys = self._keys_of(request)
        raw = await self._redis.xrange(keys.team_board(team), count=BOARD_ROWS)
        board = [BoardEntry.of(entry_id, fields) for entry_id, fields in raw]
        told = members(board)
        async with self._redis.pipeline(transaction=False) as pipe:
            for member in told:
                pipe.hmget(keys.worker(member.worker_id), "status", "workspace")
            found = await pipe.execute()
        rows = [
            _team_member(member, status or "", workspace or "")
            for member, (status, workspace) in zip(told, found, strict=True)
        ]
        cookie = request.cookies.get(session.COOKIE, "")
        html = views.team_page(
            team,
            rows,
            [entry.as_dict() for entry in board],
            csrf=session.csrf_for(self._token, cookie),
            can_act=request.get(ROLE_KEY) != "viewer",
        )
        return _html(html)

    async def _board_events(self, request: web.Request) -> web.StreamResponse:
        team = _team_name(request)
        return await self._stream(
            request, self._keys_of(request).team_board(team), default_after="$"
        )

    async def _post_to_team(self, request: web.Request) -> web.Response:
        """A post from outside (``producer``), sent as a ``team_post`` command like any
        producer's; a refusal is shown as the manager worded it."""
        team = _team_name(request)
        form = await request.post()
        user = request.get(USER_KEY, "")
        sender = f"console:{user}" if user else OPERATOR
        entry = audit_entry(
            {"command": "team_post", "team": team},
            "console",
            sender=sender,
            tenant=request.get(TENANT_KEY, ""),
        )
        await self._redis.xadd(self._keys.audit, entry, maxlen=AUDIT_MAXLEN, approximate=True)
        commands, own = self._acting(request)
        try:
            reply = await commands.request(
                "team_post",
                team=team,
                content=str(form.get("content", "")),
                request_id=f"ui-{uuid.uuid4().hex}",
                timeout=60,
            )
        finally:
            if own is not None:
                await own.aclose()
        if not reply.ok:
            raise web.HTTPConflict(text=f"{reply.error}: {reply.message}\n")
        raise web.HTTPSeeOther(f"/ui/teams/{quote(team)}")

    async def _audit(self, request: web.Request) -> web.Response:
        """The newest entries of the audit trail (SPEC §11)."""
        entries = await self._redis.xrevrange(self._keys.audit, count=200)
        return _html(views.audit_page([fields for _id, fields in entries]))

    async def _snapshots(self, request: web.Request) -> web.Response:
        keys = self._keys_of(request)
        names = await self._redis.zrevrange(keys.snapshots, 0, 199)
        async with self._redis.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.hgetall(keys.snapshot(name))
            found = await pipe.execute()
        keep = ("name", "worker_id", "agent_type", "created_at", "last_used_at", "manager_id")
        rows: list[dict[str, object]] = [
            {**{k: v.get(k, "") for k in keep}, "size_bytes": v.get("size_bytes", "")}
            for v in found
            if v
        ]
        return _html(views.snapshots_page(rows))

    async def _images(self) -> list[views.ImageRow]:
        """The worker images by last use, and whether age alone makes the next GC remove one
        (it also keeps an image a container still uses, and may remove more for a disk
        budget: ``worker-manager gc --dry-run`` on the host says exactly)."""
        used = await self._redis.zrevrange(self._keys.images, 0, 99, withscores=True)
        async with self._redis.pipeline(transaction=False) as pipe:
            for image_hash, _score in used:
                pipe.hmget(self._keys.image(image_hash), "tag", "size")
            found = await pipe.execute()
        cutoff = time.time() - self._image_max_age
        return [
            views.ImageRow(tag or image_hash, size or "", float(score), float(score) < cutoff)
            for (image_hash, score), (tag, size) in zip(used, found, strict=True)
        ]

    async def _records(self, keys: Keys) -> list[WorkerRecord]:
        """The newest workers' records, newest first (the index is scored by creation)."""
        ids = await self._redis.zrevrange(keys.index, 0, FLEET_ROWS - 1)
        async with self._redis.pipeline(transaction=False) as pipe:
            for worker_id in ids:
                pipe.hgetall(keys.worker(worker_id))
            values = await pipe.execute()
        found = [WorkerRecord.from_hash(w, v) for w, v in zip(ids, values, strict=True)]
        return [r for r in found if r is not None]

    # --- live --------------------------------------------------------------------------------
    async def _lifecycle_events(self, request: web.Request) -> web.StreamResponse:
        return await self._stream(request, self._keys_of(request).lifecycle, default_after="$")

    async def _output_events(self, request: web.Request) -> web.StreamResponse:
        worker_id = _worker_id(request)
        return await self._stream(
            request, self._keys_of(request).output(worker_id), default_after="$"
        )

    async def _stream(
        self, request: web.Request, key: str, *, default_after: str
    ) -> web.StreamResponse:
        after = request.headers.get("Last-Event-ID") or request.query.get("after") or default_after
        if after != "$" and not _entry_id(after):
            raise web.HTTPBadRequest(text="after/Last-Event-ID must be a stream entry id\n")
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store"}
        )
        await response.prepare(request)
        with contextlib.suppress(ConnectionResetError):  # the page was closed or left
            await self._relay(response, key, after)
        return response

    async def _relay(self, response: web.StreamResponse, key: str, after: str) -> None:
        """Entries of ``key`` after ``after`` as events, until the reader goes away."""
        while True:
            try:
                found = await self._redis.xread({key: after}, count=200, block=SSE_BLOCK_MS)
            except (RedisError, OSError):
                await asyncio.sleep(1.0)
                continue
            if not found:
                await response.write(b": keep-alive\n\n")
                continue
            for _stream, entries in found:
                for entry_id, fields in entries:
                    after = entry_id
                    data = json.dumps(fields, ensure_ascii=True)
                    await response.write(f"id: {entry_id}\ndata: {data}\n\n".encode())


def _html(text: str, status: int = 200) -> web.Response:
    return web.Response(
        text=text,
        status=status,
        content_type="text/html",
        headers={
            # Nothing from elsewhere, no framing: the page's own script and styles only.
            "Content-Security-Policy": "default-src 'self'; script-src 'unsafe-inline' 'self'; "
            "style-src 'unsafe-inline'; frame-ancestors 'none'",
            "X-Content-Type-Options": "nosniff",
        },
    )


def _worker_id(request: web.Request) -> str:
    """The route's worker id, a UUID (404 otherwise): an id is joined into key names, and
    ``t:acme:<uuid>`` would otherwise name a tenant's keys from the default namespace."""
    try:
        return normalize_uuid(request.match_info["worker_id"])
    except ValueError:
        raise web.HTTPNotFound(text="no such worker id\n") from None


def _team_name(request: web.Request) -> str:
    try:
        return check_team_name(request.match_info["team"])
    except ValueError:
        raise web.HTTPNotFound(text="no such team name\n") from None


def _team_member(member: Member, status: str, workspace: str) -> views.TeamMember:
    """A member's row: its record's status, changed files and conflicts (SPEC §8 summary)."""
    try:
        summary = json.loads(workspace) if workspace else {}
    except ValueError:
        summary = {}
    summary = summary if isinstance(summary, dict) else {}
    changed = [
        str(item.get("path", "")) for item in summary.get("changed") or [] if isinstance(item, dict)
    ]
    conflicts = [
        (str(item.get("worker_id", "")), [str(p) for p in item.get("paths") or []])
        for item in summary.get("conflicts") or []
        if isinstance(item, dict)
    ]
    return views.TeamMember(
        member.worker_id,
        member.status,
        member.note,
        member.last_seen,
        status,
        changed[:MEMBER_FILES],
        conflicts,
    )


def _chosen_tenant(request: web.Request) -> str:
    """The tenant the operator chose to look at (its view cookie), if it is a tenant's name."""
    chosen = request.cookies.get(VIEW_COOKIE, "")
    return chosen if TENANT_RE.fullmatch(chosen) else ""


def _client(request: web.Request) -> str:
    return client_key(request.remote)


def _entry_id(text: str) -> bool:
    ms, _, seq = text.partition("-")
    return ms.isdigit() and (seq == "" or seq.isdigit())


def _filters(request: web.Request) -> tuple[list[str], list[str]]:
    status = [s for s in request.query.getall("status", []) if s in views.STATUSES]
    selector = [p for s in request.query.getall("selector", []) for p in s.split() if "=" in p]
    return status, selector


def _filtered(
    records: list[WorkerRecord], status: list[str], selector: list[str]
) -> list[WorkerRecord]:
    wanted = dict(p.split("=", 1) for p in selector)
    return [
        r
        for r in records
        if (not status or r.text("status") in status)
        and all(views.metadata_of(r).get(k) == v for k, v in wanted.items())
    ]
