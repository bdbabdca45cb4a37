"""Figures 17 and 17b: teams (issue 28, SPEC §12), a post's way to a teammate and the manager's
cost of teams.

* **17**, a post → its reading by a teammate. CUSTOM workers of one team: a reader B (no input,
  its wrapper following the board) and posters. A poster's agent runs ``wm-team post <its
  clock>`` :data:`POSTS` times, :data:`EVERY` seconds apart (one burst of the wrapper's write
  bucket: 10 posts, then one per 3 s); a blocking XREAD reader here follows B's output, and each
  ``team`` event carrying that post is timed: arrival minus the clock the agent read just before
  it ran ``wm-team`` (container and host share the kernel's clock). So the figure includes the
  ``wm-team`` process (an interpreter's start), the socket, the poster's wrapper's XADD, B's
  wrapper's XREAD BLOCK and its XADD of the event, and this reader. Each round uses the next
  poster, so each starts with a full bucket (a poster used again first waits for its bucket to
  refill, untimed). The baseline, alternately: this process XADDing its clock to a stream at the
  same pace, read by the same kind of reader (figure 4b's). Goal: p99 ≤ 50 ms. The note splits
  the time with the Redis clock of the entries' ids: the poster's side (agent clock → board entry),
  B's wrapper (board entry → its ``team`` event) and the reader (event → read).
* **17b**, the manager's cost with teams. Two fleets of CUSTOM workers, alive together: one in
  :data:`TEAMS` teams, one in no team. In a window of :data:`WINDOW` seconds every worker of one
  fleet is given an input: a team worker's agent posts :data:`COST_POSTS` times with ``wm-team``,
  a worker of no team runs the same loop with a Python process that imports what ``wm-team``
  imports and prints a line instead (the same stdout, processes of about the same cost). The
  figure is the ``serve`` process's CPU time (``utime + stime`` of ``/proc/<pid>/stat``) over
  the window, the team fleet's windows against the other's, alternately. Goal ≤ 1.1. The note
  gives ``status`` round trips measured during the windows (one every :data:`PROBE_EVERY` s, in
  both) and the manager's CPU while each fleet was created (a team member's join is written
  from the lifecycle stream).

Every worker created here is deleted at the end, also on failure (and the run's ``close`` removes
any container of its manager left behind).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import statistics
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.env import BenchEnv
from benchmarks.environments_bench import timed_create
from benchmarks.forks_bench import remove_all
from benchmarks.harness import Figure, alternate, percentile
from benchmarks.requester import Requester
from benchmarks.streams import collect
from worker_base.team_socket import WRITE_BURST, WRITE_REFILL_SECONDS

#: The agent: the last line of its prompt (notices of the board may come before it) says what to
#: do. ``post:N:S`` runs ``wm-team post <clock>`` N times, S seconds apart; ``echo:N:S`` runs a
#: Python process that imports what ``wm-team`` imports and prints one line instead (the same
#: processes, the same stdout, no team); ``who`` runs ``wm-team who`` once (a warm-up that
#: spends none of the write bucket). Each step prints one JSON line: the clock before and after
#: the process, its exit code and output.
AGENT_SCRIPT = """\
import json, os, subprocess, sys, time
lines = [l for l in os.environ.get("WM_PROMPT", "").splitlines() if l.strip()]
mode, *args = (lines[-1] if lines else "idle").split(":")
steps = []
if mode == "who":
    steps = [["wm-team", "who"]]
elif mode in ("post", "echo"):
    steps = [None] * int(args[0])
every = float(args[1]) if len(args) > 1 else 0.0
for step in steps:
    t0 = time.time()
    if step is None and mode == "post":
        step = ["wm-team", "post", "%.6f" % t0]
    elif step is None:
        step = [sys.executable, "-IS", "-c", "import _json, _socket, os; print('posted 0-0')"]
    r = subprocess.run(step, capture_output=True, text=True)
    t1 = time.time()
    print(json.dumps({"t0": t0, "t1": t1, "rc": r.returncode, "out": r.stdout.strip()[-200:],
                      "err": r.stderr.strip()[-300:]}), flush=True)
    time.sleep(max(0.0, every - (t1 - t0)))
"""
AGENT_COMMAND = ["python3", "-c", AGENT_SCRIPT]

#: Figure 17: posts a round (the write bucket's burst), seconds between them, posters at most.
POSTS = WRITE_BURST
EVERY = 0.1
MAX_POSTERS = 8
#: Seconds a used poster's bucket needs to be full again (and a margin).
REFILL = WRITE_BURST * WRITE_REFILL_SECONDS + 1.0
#: Figure 17b: teams of the fleet, posts a worker a window, seconds between them, the window.
TEAMS = 5
COST_POSTS = 3
COST_EVERY = 0.2
WINDOW = 10.0
PROBE_EVERY = 0.2
CREATE_CONCURRENCY = 8


# --- shared -------------------------------------------------------------------------------------
def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` (all its threads), in seconds."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text.rsplit(")", 1)[1].split()
    # After the command's ")": state is field 3, utime field 14 and stime field 15.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _ms(entry_id: str) -> int:
    return int(entry_id.split("-", 1)[0])


async def _tail(env: BenchEnv, stream: str) -> str:
    newest = await env.redis.xrevrange(stream, count=1)
    return str(newest[0][0]) if newest else "0-0"


async def create_fleet(
    env: BenchEnv, into: list[str], extras: list[dict[str, str]], *, timeout: float = 600
) -> float:
    """One worker per ``extras`` (fields added to the create), at most
    :data:`CREATE_CONCURRENCY` at a time; each id appended to ``into`` once RUNNING (a create
    that fails removes its own worker). Raises the first failure once all have ended; returns
    the seconds the whole fleet took."""
    gate = asyncio.Semaphore(CREATE_CONCURRENCY)

    async def one(extra: dict[str, str]) -> None:
        async with gate:
            _, worker_id = await timed_create(env, AGENT_COMMAND, extra, timeout=timeout)
            into.append(worker_id)

    started = time.perf_counter()
    results = await asyncio.gather(*(one(e) for e in extras), return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return time.perf_counter() - started


@dataclass
class Run:
    """One input's outcome, read from the worker's output: its stdout lines (parsed), its
    ``team`` events and the Redis time of its ``done``."""

    lines: list[dict[str, object]] = field(default_factory=list)
    team_events: int = 0
    done_ms: int = 0
    exit_code: str = ""
    stderr: list[str] = field(default_factory=list)


async def follow_run(env: BenchEnv, worker_id: str, after: str, timeout: float) -> Run:
    """Follows the worker's output from ``after`` until a ``done``."""
    stream = env.keys.output(worker_id)
    run = Run()
    last = after
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        response = await env.redis.xread(
            {stream: last}, count=1000, block=max(1, int(min(left, 1.0) * 1000))
        )
        for _s, entries in response or []:
            for entry_id, fields in entries:
                last = str(entry_id)
                kind = fields.get("type")
                if kind == "stdout" and fields.get("content", "").startswith("{"):
                    with contextlib.suppress(ValueError):
                        run.lines.append(json.loads(fields["content"]))
                elif kind == "team":
                    run.team_events += 1
                elif kind in ("stderr", "error"):
                    run.stderr = [*run.stderr[-4:], str(fields.get("content", ""))[-300:]]
                elif kind == "done":
                    run.done_ms = _ms(last)
                    run.exit_code = str(fields.get("content", ""))
                    return run
    raise TimeoutError(f"no done on {stream} within {timeout:g}s")


def failed_steps(run: Run) -> list[str]:
    """The agent's steps that did not exit 0 (a refused post says why on stderr), or its own
    last errors when it did not exit 0 itself."""
    failed = [str(line.get("err") or line.get("out")) for line in run.lines if line.get("rc") != 0]
    if run.exit_code != "0":
        failed += [f"the agent exited {run.exit_code}", *run.stderr]
    return failed


async def give(env: BenchEnv, worker_ids: list[str], prompt: str) -> None:
    """The same input to every worker, in one pipeline."""
    pipe = env.redis.pipeline(transaction=False)
    for worker_id in worker_ids:
        pipe.xadd(env.keys.input(worker_id), {"type": "prompt", "content": prompt})
    await pipe.execute()


# --- 17: a post → a teammate's team event -------------------------------------------------------
@dataclass
class Arrival:
    """One post as the reader saw it on B's output."""

    read_at: float  # time.time() when the reader had it
    printed: float  # the poster's clock before ``wm-team`` ran (the post's text)
    board_ms: int  # the board entry's id (Redis clock)
    event_ms: int  # B's ``team`` event's id (Redis clock)


async def follow_posts(
    env: BenchEnv, stream: str, after: str, sender: str, count: int, timeout: float
) -> list[Arrival]:
    """The ``team`` events of ``count`` posts by ``sender`` on ``stream``, as they arrive."""

    def pick(entry_id: str, fields: dict[str, str], now: float) -> Arrival | None:
        if fields.get("type") != "team":
            return None
        entry = json.loads(fields["content"])
        if entry.get("sender") != sender or entry.get("kind") != "post":
            return None
        return Arrival(now, float(entry["content"]), _ms(entry["id"]), _ms(entry_id))

    return await collect(env.redis, stream, after, count, timeout, pick, "posts")


async def latency_figure(env: BenchEnv, runs: int, created: list[str]) -> Figure:
    """Figure 17; the workers it creates go into ``created`` (the caller removes them)."""
    team = f"lat-{env.token}"
    arrivals: list[Arrival] = []
    round_trips: list[float] = []  # the wm-team process, start to exit, in the agent
    base_ms: list[float] = []
    readers: list[str] = []
    posters: list[str] = []
    try:
        await create_fleet(env, readers, [{"team": team}])
    finally:
        created.extend(readers)
    reader = readers[0]
    try:
        await create_fleet(env, posters, [{"team": team}] * min(runs + 1, MAX_POSTERS))
    finally:
        created.extend(posters)
    # Untimed: each poster's first wm-team (its interpreter's files into the page cache),
    # by a read, which spends none of the write bucket.
    tails = [await _tail(env, env.keys.output(p)) for p in posters]
    await give(env, posters, "who")
    for poster, after in zip(posters, tails, strict=True):
        warm = await follow_run(env, poster, after, timeout=120)
        if warm.exit_code != "0" or failed_steps(warm):
            raise RuntimeError(f"wm-team who failed in {poster}: {failed_steps(warm)}")
    used_at: dict[str, float] = {}
    turn = 0
    out = env.keys.output(reader)
    base_stream = f"{env.prefix}:bench:teams:plain"

    async def ours(_i: int) -> float:
        nonlocal turn
        poster = posters[turn % len(posters)]
        turn += 1
        if poster in used_at:  # untimed: its bucket full again
            await asyncio.sleep(max(0.0, used_at[poster] + REFILL - time.monotonic()))
        after = await _tail(env, out)
        mine = await _tail(env, env.keys.output(poster))
        follow = asyncio.create_task(follow_posts(env, out, after, poster, POSTS, 60))
        await env.redis.xadd(
            env.keys.input(poster), {"type": "prompt", "content": f"post:{POSTS}:{EVERY}"}
        )
        try:
            run = await follow_run(env, poster, mine, timeout=60)
            used_at[poster] = time.monotonic()
            if run.exit_code != "0" or failed_steps(run):
                raise RuntimeError(f"posts failed in {poster}: {failed_steps(run)}")
            got = await follow
        finally:
            follow.cancel()
        arrivals.extend(got)
        round_trips.extend(float(str(line["t1"])) - float(str(line["t0"])) for line in run.lines)
        return statistics.median(a.read_at - a.printed for a in got)

    async def plain(_i: int) -> float:
        after = await _tail(env, base_stream)
        follow = asyncio.create_task(follow_plain(env, base_stream, after, POSTS, 60))
        for _ in range(POSTS):
            await env.redis.xadd(base_stream, {"type": "team", "content": f"{time.time():.6f}"})
            await asyncio.sleep(EVERY)
        got = await follow
        base_ms.extend(s * 1000 for s in got)
        return statistics.median(got)

    await alternate(runs, plain, ours, warmup=1)
    await env.redis.delete(base_stream)
    # The warm-up round's arrivals were recorded too: only the timed rounds' are kept.
    arrivals = arrivals[POSTS:]
    round_trips = round_trips[POSTS:]
    base_ms = base_ms[POSTS:]
    ours_ms = [(a.read_at - a.printed) * 1000 for a in arrivals]
    posting = [a.board_ms - a.printed * 1000 for a in arrivals]
    relaying = [float(a.event_ms - a.board_ms) for a in arrivals]
    reading = [a.read_at * 1000 - a.event_ms for a in arrivals]
    board_to_read = [a.read_at * 1000 - a.board_ms for a in arrivals]
    rt_ms = [s * 1000 for s in round_trips]

    def p(values: list[float]) -> str:
        return f"p50 {percentile(values, 50):.1f} / p99 {percentile(values, 99):.1f} ms"

    note = (
        f"{len(arrivals)} posts, {POSTS} a round {EVERY:g} s apart, {len(posters)} posters; "
        f"agent clock → board entry (wm-team's start, the socket, the XADD) {p(posting)}; "
        f"board entry → B's team event (B's wrapper, Redis clock, 1 ms steps) {p(relaying)}; "
        f"event → read here {p(reading)}; board entry → read {p(board_to_read)}; "
        f"the wm-team process in the agent, start to exit, {p(rt_ms)}"
    )
    figure = Figure(
        name="teams.latency",
        title="17. team post → a teammate's team event",
        unit="ms",
        ours_label="wm-team post in one agent → team event on another's output",
        baseline_label="direct XADD → blocking XREAD",
        goal="value_max",
        bound=50.0,
        ours=ours_ms,
        baseline=base_ms,
        note=note,
        extra={
            "goal_on": "p99",
            "p50_ms": percentile(ours_ms, 50),
            "p99_ms": percentile(ours_ms, 99),
            "baseline_p50_ms": percentile(base_ms, 50),
            "baseline_p99_ms": percentile(base_ms, 99),
            "posting_ms": posting,
            "relaying_ms": relaying,
            "reading_ms": reading,
            "board_to_read_ms": board_to_read,
            "wm_team_round_trip_ms": rt_ms,
            "posts_per_round": POSTS,
            "every_seconds": EVERY,
            "posters": len(posters),
        },
    )
    return figure


async def follow_plain(
    env: BenchEnv, stream: str, after: str, count: int, timeout: float
) -> list[float]:
    """Arrival minus the clock in each of ``count`` entries, in seconds."""

    def pick(_entry_id: str, fields: dict[str, str], now: float) -> float:
        return now - float(fields["content"])

    return await collect(env.redis, stream, after, count, timeout, pick, "entries")


# --- 17b: the manager's CPU with teams ----------------------------------------------------------
@dataclass
class Window:
    cpu: float
    status_ms: list[float]
    finished_s: float  # the last worker's done after the inputs were given (Redis clock)
    team_events: int
    late: int  # workers whose done came after the window


async def cost_figure(env: BenchEnv, size: int, runs: int, created: list[str]) -> Figure:
    """Figure 17b with ``size`` workers a fleet; the ids go into ``created`` as they come."""
    teams = [f"cost-{env.token}-{k}" for k in range(TEAMS)]
    team_ids: list[str] = []
    plain_ids: list[str] = []
    pid = env.manager_pid
    before = cpu_seconds(pid)
    try:
        team_create = await create_fleet(
            env, team_ids, [{"team": teams[i % TEAMS]} for i in range(size)]
        )
    finally:
        created.extend(team_ids)
    team_create_cpu = cpu_seconds(pid) - before
    before = cpu_seconds(pid)
    try:
        plain_create = await create_fleet(env, plain_ids, [{} for _ in range(size)])
    finally:
        created.extend(plain_ids)
    plain_create_cpu = cpu_seconds(pid) - before
    await asyncio.sleep(3.0)  # the creates' stragglers: joins, first heartbeats

    windows: dict[str, list[Window]] = {"post": [], "echo": []}

    async def window(worker_ids: list[str], mode: str) -> float:
        tails = await asyncio.gather(*(_tail(env, env.keys.output(w)) for w in worker_ids))
        probe_times: list[float] = []
        prober = asyncio.create_task(probe(env, worker_ids[0], probe_times))
        started = time.monotonic()
        start_ms = int(time.time() * 1000)
        cpu_before = cpu_seconds(pid)
        await give(env, worker_ids, f"{mode}:{COST_POSTS}:{COST_EVERY}")
        await asyncio.sleep(max(0.0, WINDOW - (time.monotonic() - started)))
        cpu = cpu_seconds(pid) - cpu_before
        prober.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await prober
        # Untimed: every input ran to its end before the next window.
        results = await asyncio.gather(
            *(follow_run(env, w, t, timeout=180) for w, t in zip(worker_ids, tails, strict=True))
        )
        failures = [f for r in results for f in failed_steps(r)]
        if failures or any(r.exit_code != "0" for r in results):
            raise RuntimeError(f"{mode} inputs failed: {failures[:3]}")
        last_done = max(r.done_ms for r in results)
        windows[mode].append(
            Window(
                cpu,
                probe_times,
                (last_done - start_ms) / 1000,
                sum(r.team_events for r in results),
                sum(1 for r in results if r.done_ms - start_ms > WINDOW * 1000),
            )
        )
        return cpu

    async def ours(_i: int) -> float:
        return await window(team_ids, "post")

    async def plain(_i: int) -> float:
        return await window(plain_ids, "echo")

    base, mine = await alternate(runs, plain, ours, warmup=1)
    timed = {mode: found[1:] for mode, found in windows.items()}  # the warm-up pair left out

    def status(mode: str) -> float:
        return statistics.median(s for w in timed[mode] for s in w.status_ms)

    def finished(mode: str) -> float:
        return max(w.finished_s for w in timed[mode])

    late = sum(w.late for found in timed.values() for w in found)
    per_team = size // TEAMS
    events = statistics.median(w.team_events for w in timed["post"])
    note = (
        f"{WINDOW:g} s windows; each worker {COST_POSTS} steps {COST_EVERY:g} s apart; "
        f"{events:.0f} team events a window (posts × {per_team - 1} teammates, counted up to "
        f"each reader's own done); the last input "
        f"done at +{finished('post'):.1f} s (teams) / +{finished('echo'):.1f} s (none)"
        + (f", {late} after the window" if late else "")
        + f"; status round trip during the windows: {status('post'):.2f} ms (teams) vs "
        f"{status('echo'):.2f} ms (none), ratio {status('post') / status('echo'):.2f}; "
        f"the manager's CPU while each fleet was created: {team_create_cpu:.1f} s in "
        f"{team_create:.0f} s (teams) vs {plain_create_cpu:.1f} s in {plain_create:.0f} s (none)"
    )
    figure = Figure(
        name="teams.manager_cpu",
        title=f"17b. manager CPU, {size} workers in {TEAMS} teams posting",
        unit="s",
        ours_label=f"{size} workers in {TEAMS} teams, {COST_POSTS} posts each",
        baseline_label=f"{size} workers in no team, the same output",
        goal="ratio_max",
        bound=1.1,
        ours=mine,
        baseline=base,
        note=note,
        extra={
            "window_seconds": WINDOW,
            "workers": size,
            "teams": TEAMS,
            "posts_per_worker": COST_POSTS,
            "status_ms": {m: [s for w in timed[m] for s in w.status_ms] for m in timed},
            "finished_seconds": {m: [w.finished_s for w in timed[m]] for m in timed},
            "team_events": [w.team_events for w in timed["post"]],
            "late": late,
            "create_cpu_seconds": {"teams": team_create_cpu, "none": plain_create_cpu},
            "create_seconds": {"teams": team_create, "none": plain_create},
        },
    )
    return figure


async def probe(env: BenchEnv, worker_id: str, into: list[float]) -> None:
    """``status`` of one worker every :data:`PROBE_EVERY` s until cancelled; the round trips
    in ms into ``into``."""
    requester = Requester(env.redis, f"{env.keys.replies}:bench:{uuid.uuid4().hex}")
    try:
        while True:
            seconds, _ = await requester.call(
                env.keys.commands, {"command": "status", "worker_id": worker_id}
            )
            into.append(seconds * 1000)
            await asyncio.sleep(PROBE_EVERY)
    finally:
        with contextlib.suppress(Exception):
            await env.redis.delete(requester.reply_to)


# --- both -----------------------------------------------------------------------------------------
async def team_figures(env: BenchEnv, latency_runs: int, cost_runs: int, size: int) -> list[Figure]:
    """17 with ``latency_runs`` rounds, then 17b with ``cost_runs`` pairs of ``size``-worker
    fleets; the workers of each removed after it, also on failure."""
    created: list[str] = []
    try:
        latency = await latency_figure(env, latency_runs, created)
    finally:
        await remove_all(env, created)
    created = []
    try:
        cost = await cost_figure(env, size, cost_runs, created)
    finally:
        await remove_all(env, created)
    return [latency, cost]
