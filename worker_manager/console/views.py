"""The console's HTML: plain functions from data to text, every value escaped.

Nothing a worker or a producer wrote (metadata, reasons, output, dead letters) reaches the page
unescaped: values go through :func:`e`; live updates are inserted with ``textContent`` or as
HTML rendered here.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from html import escape
from urllib.parse import quote

from worker_manager.contract.record import WorkerRecord

STATUSES = ("STARTING", "RUNNING", "SUSPENDED", "STOPPED", "FAILED")


@dataclass(frozen=True, slots=True)
class ImageRow:
    tag: str
    size: str
    last_used: float
    aged_out: bool  # the next GC removes it for its age (unless a container still uses it)


_STYLE = """
body{font:14px system-ui,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse;margin:.5em 0}td,th{border-bottom:1px solid #ddd;padding:3px 8px;
text-align:left;vertical-align:top}pre,.out{font:12px ui-monospace,monospace;white-space:pre-wrap}
.out{max-height:28em;overflow:auto;background:#f6f6f6;padding:.5em}.k{color:#666}
nav a{margin-right:1em}.counts span{margin-right:1.2em}form.inline{display:inline}
"""


def e(value: object) -> str:
    """Escaped for HTML text and attribute values."""
    return escape(str(value), quote=True)


def page(title: str, body: str, *, script: str = "") -> str:
    return (
        "<!doctype html><html><head><meta charset=utf-8>"
        f"<title>{e(title)}</title><style>{_STYLE}</style></head><body>"
        '<nav><a href="/ui">fleet</a> <a href="/ui/snapshots">snapshots</a> '
        '<a href="/ui/audit">audit</a></nav>'
        f"<h1>{e(title)}</h1>{body}"
        + (f"<script>{script}</script>" if script else "")
        + "</body></html>"
    )


def login_page(failed: bool) -> str:
    problem = "<p><b>That did not sign you in.</b></p>" if failed else ""
    return page(
        "worker-manager: sign in",
        f"{problem}<form method=post action=/ui/login>"
        "<label>Token <input type=password name=token autofocus></label> "
        "<button type=submit>Sign in</button></form>"
        "<p>or, as an access user (<code>worker-manager access add</code>):</p>"
        "<form method=post action=/ui/login>"
        "<label>User <input name=username></label> "
        "<label>Password <input type=password name=password></label> "
        "<button type=submit>Sign in</button></form>",
    )


def _size(text: str) -> str:
    return f"{int(text) / 1e6:.0f} MB" if text.isdigit() else text


def _age(since: float | None, now: float) -> str:
    if since is None:
        return ""
    seconds = max(0, int(now - since))
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    return f"{seconds // 3600}h"


def metadata_of(record: WorkerRecord) -> dict[str, str]:
    try:
        data = json.loads(record.text("metadata") or "{}")
    except ValueError:
        return {}
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}


def services_of(record: WorkerRecord) -> str:
    """Its services and their states (SPEC §9): ``db running, cache stopped``."""
    try:
        states = json.loads(record.text("services") or "{}")
    except ValueError:
        return ""
    if not isinstance(states, dict):
        return ""
    return ", ".join(f"{name} {state}" for name, state in sorted(states.items()))


def environment_of(record: WorkerRecord) -> str:
    """Its environment (SPEC §9): a catalogue name, or an ad hoc spec's digest, cut."""
    label = record.text("environment")
    return label[:19] + "…" if label.startswith("sha256:") else label


def rows(records: Sequence[WorkerRecord], now: float) -> str:
    """The fleet table's rows (also served alone, for the live refresh)."""
    out = []
    for r in records:
        meta = " ".join(f"{k}={v}" for k, v in sorted(metadata_of(r).items()))
        why = r.text("reason") or r.text("progress")
        out.append(
            f'<tr id="w-{e(r.worker_id)}"><td><a href="/ui/workers/{quote(r.worker_id)}">'
            f"{e(r.worker_id)}</a></td><td>{e(r.status.value if r.status else '?')}</td>"
            f"<td>{e(r.text('agent_type'))}</td><td>{e(environment_of(r))}</td>"
            f"<td>{e(_age(r.created_at, now))}</td>"
            f"<td>{e(_age(r.last_activity_at, now))}</td><td>{e(r.cost_usd)}</td>"
            f"<td>{e(why)}</td><td>{e(meta)}</td><td>{e(r.manager_id)}</td></tr>"
        )
    return "".join(out)


def _namespaces(tenant: str, tenants: Sequence[str] | None) -> str:
    """Which namespace the page shows (SPEC §11), and for the operator the others to choose."""
    if tenants is None:
        return f'<p class=namespace id="namespace">tenant <b>{e(tenant)}</b></p>' if tenant else ""
    if not tenants:
        return ""
    links = " ".join(
        f"<b>{e(name or 'default')}</b>"
        if name == tenant
        else f'<a href="/ui/view?tenant={quote(name)}">{e(name or "default")}</a>'
        for name in ["", *tenants]
    )
    return f'<p class=namespace id="namespace"><span class=k>namespace:</span> {links}</p>'


def fleet_page(
    records: Sequence[WorkerRecord],
    counts: Mapping[str, int],
    managers: Sequence[tuple[str, str]],
    dead: Sequence[tuple[str, Mapping[str, str]]],
    images: Sequence[ImageRow],
    *,
    status: Sequence[str],
    selector: Sequence[str],
    now: float,
    tenant: str = "",
    tenants: Sequence[str] | None = None,
) -> str:
    """``tenant``: the namespace shown (``""``: the default one); ``tenants``: those the
    operator may switch to (None: the reader may not switch, being a tenant's user)."""
    # Counted over the workers the page reads (the newest FLEET_ROWS), not the whole index.
    count_html = "<span class=k>newest workers:</span>" + "".join(
        f"<span>{e(s)} <b>{counts.get(s, 0)}</b></span>" for s in STATUSES
    )
    boxes = "".join(
        f'<label><input type=checkbox name=status value="{s}"'
        f"{' checked' if s in status else ''}> {s}</label> "
        for s in STATUSES
    )
    filters = (
        f"<form method=get action=/ui>{boxes}"
        f'<input name=selector placeholder="key=value" value="{e(" ".join(selector))}"> '
        "<button type=submit>Filter</button></form>"
    )
    table = (
        "<table><thead><tr><th>worker</th><th>status</th><th>agent</th><th>environment</th>"
        "<th>age</th>"
        "<th>idle</th><th>cost</th><th>reason / progress</th><th>metadata</th>"
        f'<th>manager</th></tr></thead><tbody id="fleet">{rows(records, now)}</tbody></table>'
    )
    manager_rows = "".join(
        f"<tr><td>{e(m)}</td><td>{e(presence)}</td></tr>" for m, presence in managers
    )
    dead_rows = "".join(
        f"<tr><td>{e(i)}</td><td>{e(f.get('command', ''))}</td>"
        f"<td>{e(f.get('request_id', ''))}</td><td>{e(f.get('dead_reason', ''))}</td></tr>"
        for i, f in dead
    )
    image_rows = "".join(
        f"<tr><td>{e(i.tag)}</td><td>{e(_size(i.size))}</td><td>{e(_age(i.last_used, now))}"
        f"</td><td>{'removed by age' if i.aged_out else 'kept'}</td></tr>"
        for i in images
    )
    body = (
        f"{_namespaces(tenant, tenants)}"
        f'<p class=counts id="counts">{count_html}</p>{filters}{table}'
        "<h2>Newest dead letters</h2><table><tr><th>id</th><th>command</th>"
        f"<th>request</th><th>reason</th></tr>{dead_rows}</table>"
    )
    if tenants is not None:  # the fleet's managers and images: the operator's only
        body += (
            "<h2>Managers</h2><table><tr><th>manager</th><th>presence (room, pools)</th></tr>"
            f"{manager_rows}</table>"
            "<h2>Images</h2><table><tr><th>image</th><th>size</th><th>last used</th>"
            f"<th>next GC</th></tr>{image_rows}</table>"
        )
    script = (
        "let t=null;const es=new EventSource('/ui/events');"
        "es.onmessage=()=>{clearTimeout(t);t=setTimeout(async()=>{"
        "const r=await fetch('/ui/rows'+location.search);"
        "if(r.ok){document.getElementById('fleet').innerHTML=await r.text();}},250);};"
    )
    return page("worker-manager: the fleet", body, script=script)


def worker_page(
    record: WorkerRecord,
    lifecycle: Sequence[Mapping[str, str]],
    output: Sequence[tuple[str, Mapping[str, str]]],
    evidence: Mapping[str, str],
    *,
    csrf: str,
    can_act: bool = True,
) -> str:
    """``can_act``: the buttons (not for a viewer, whom the server refuses them anyway)."""
    wid = record.worker_id
    fields = "".join(
        f"<tr><td class=k>{e(k)}</td><td>{e(v)}</td></tr>"
        for k, v in sorted(record.fields.items())
        if k not in ("instructions",)
    )
    changes = "".join(
        f"<tr><td>{e(c.get('timestamp', ''))}</td><td>{e(c.get('from', ''))} → "
        f"{e(c.get('to', ''))}</td><td>{e(c.get('reason', ''))}</td></tr>"
        for c in lifecycle
    )
    lines = "".join(
        f"<div>[{e(f.get('type', ''))}] {e(f.get('content', ''))}</div>" for _i, f in output
    )
    last = output[-1][0] if output else "0-0"
    proof = "".join(
        f"<tr><td class=k>{e(k)}</td><td><pre>{e(v)}</pre></td></tr>"
        for k, v in sorted(evidence.items())
    )
    action = f"/ui/workers/{quote(wid)}"
    hidden = f'<input type=hidden name=csrf value="{e(csrf)}">'
    buttons = (
        f'<form method=post action="{action}/send">{hidden}'
        "<textarea name=content rows=3 cols=80></textarea><br>"
        "<button type=submit>Send</button></form>"
        f'<form class=inline method=post action="{action}/cancel">{hidden}'
        "<button type=submit>Cancel</button></form> "
        f'<form class=inline method=post action="{action}/delete">{hidden}'
        "<button type=submit>Delete</button></form>"
        f'<form class=inline method=post action="{action}/fork">{hidden}'
        "<input name=count type=number min=1 value=1 size=3> "
        "<button type=submit>Fork</button></form> "
        f'<form class=inline method=post action="{action}/snapshot">{hidden}'
        '<input name=name placeholder="snapshot name" size=16> '
        "<button type=submit>Snapshot</button></form>"
    )
    body = (
        f'<p>status <b id="status">{e(record.text("status"))}</b> '
        f'<span id="reason">{e(record.text("reason"))}</span></p>'
        f"<p>agent <b>{e(record.text('agent_type'))}</b> environment "
        f'<b id="environment">{e(record.text("environment") or "none")}</b> services '
        f'<b id="services">{e(services_of(record) or "none")}</b>'
        + (
            f' team <a id="team" href="/ui/teams/{quote(record.text("team"))}">'
            f"{e(record.text('team'))}</a>"
            if record.text("team")
            else ""
        )
        + "</p>"
        + (buttons if can_act else "")
        + f'<h2>Output</h2><div class=out id="output">{lines}</div>'
        f"<h2>Record</h2><table>{fields}</table>"
        f"<h2>Lifecycle</h2><table>{changes}</table>"
        f"<h2>Evidence</h2><table>{proof or '<tr><td>none yet</td></tr>'}</table>"
    )
    script = (
        f"const out=document.getElementById('output');"
        f"const es=new EventSource('{action}/output?after={quote(last)}');"
        "es.onmessage=(m)=>{const f=JSON.parse(m.data);const d=document.createElement('div');"
        "d.textContent='['+(f.type||'')+'] '+(f.content||'');out.appendChild(d);"
        "out.scrollTop=out.scrollHeight;};"
        "const lc=new EventSource('/ui/events');"
        f"lc.onmessage=(m)=>{{const f=JSON.parse(m.data);if(f.worker_id!=={_js(wid)})return;"
        "document.getElementById('status').textContent=f.to||'';"
        "document.getElementById('reason').textContent=f.reason||'';};"
    )
    return page(f"worker {wid}", body, script=script)


def _js(value: str) -> str:
    """A JavaScript string literal that cannot end the script element it stands in."""
    return json.dumps(value).replace("<", "\\u003c").replace(">", "\\u003e")


def now() -> float:
    return time.time()


def snapshots_page(snapshots: list[dict[str, object]]) -> str:
    """The snapshots (SPEC §10): what each was taken of, where it lives, its size, its use."""
    rows = "".join(
        "<tr>"
        + "".join(
            f"<td>{e(str(s.get(k, '')))}</td>"
            for k in ("name", "worker_id", "agent_type", "created_at", "last_used_at")
        )
        + f"<td>{e(str(s.get('manager_id', '')))}</td><td>{e(str(s.get('size_bytes', '')))}</td>"
        + "</tr>"
        for s in snapshots
    )
    body = (
        "<table id=snapshots><thead><tr><th>name</th><th>of worker</th><th>agent</th>"
        "<th>taken</th><th>last used</th><th>manager</th><th>bytes</th></tr></thead>"
        f"<tbody>{rows}</tbody></table>"
    )
    return page("Snapshots", body)


def audit_page(entries: list[dict[str, str]]) -> str:
    """The audit trail, newest first (SPEC §11): every value escaped."""
    keys = ("time", "command", "worker_id", "request_id", "outcome", "sender")
    rows = "".join(
        "<tr>" + "".join(f"<td>{e(entry.get(k, ''))}</td>" for k in keys) + "</tr>"
        for entry in entries
    )
    head = "".join(f"<th>{k}</th>" for k in keys)
    return page(
        "Audit", f"<table id=audit><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"
    )


@dataclass(frozen=True, slots=True)
class TeamMember:
    """One member on the team page: what the board says, and what its record says."""

    worker_id: str
    said: str  # its last status word on the board
    note: str
    last_seen: str
    status: str  # its record's status ("" once the record is gone)
    changed: list[str]
    conflicts: list[tuple[str, list[str]]]


def team_page(
    team: str,
    members: Sequence[TeamMember],
    board: Sequence[Mapping[str, str]],
    *,
    csrf: str,
    can_act: bool = True,
) -> str:
    """A team (SPEC §12): each member's status, note, last activity, changed files and the
    conflicts between them; the board, live; a post form (not for a viewer)."""
    rows = "".join(
        f'<tr><td><a href="/ui/workers/{quote(m.worker_id)}">{e(m.worker_id)}</a></td>'
        f"<td>{e(m.status)}</td><td>{e(m.said)}</td><td>{e(m.note)}</td>"
        f"<td>{e(m.last_seen)}</td><td>{e(', '.join(m.changed))}</td>"
        "<td>"
        + "; ".join(f"{e(other)}: {e(', '.join(paths))}" for other, paths in m.conflicts)
        + "</td></tr>"
        for m in members
    )
    head = "".join(
        f"<th>{k}</th>"
        for k in ("worker", "status", "says", "note", "last seen", "changed", "conflicts")
    )
    entries = "".join(_board_line(f) for f in board)
    last = board[-1].get("id", "0-0") if board else "0-0"
    action = f"/ui/teams/{quote(team)}"
    form = (
        f'<form method=post action="{action}/post">'
        f'<input type=hidden name=csrf value="{e(csrf)}">'
        "<textarea name=content rows=2 cols=80></textarea><br>"
        "<button type=submit>Post to the team</button></form>"
    )
    body = (
        f"<table id=members><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"
        + (form if can_act else "")
        + f'<h2>Board</h2><div class=out id="board">{entries}</div>'
    )
    script = (
        "const board=document.getElementById('board');"
        f"const es=new EventSource('{action}/events?after={quote(last)}');"
        "es.onmessage=(m)=>{const f=JSON.parse(m.data);const d=document.createElement('div');"
        "d.textContent=(f.timestamp||'')+' '+(f.sender||'')+' '+(f.kind==='status'?"
        "'is '+(f.content||'')+(f.note?': '+f.note:''):'posted: '+(f.content||''));"
        "board.appendChild(d);board.scrollTop=board.scrollHeight;};"
    )
    return page(f"team {team}", body, script=script)


def _board_line(fields: Mapping[str, str]) -> str:
    if fields.get("kind") == "status":
        note = fields.get("note", "")
        said = f"is {fields.get('content', '')}" + (f": {note}" if note else "")
    else:
        said = f"posted: {fields.get('content', '')}"
    return f"<div>{e(fields.get('timestamp', ''))} {e(fields.get('sender', ''))} {e(said)}</div>"
