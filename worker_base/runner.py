"""Running the agent for one input, streaming what it prints as it prints it.

The agent runs as its own user (``worker_base.identity``) in its own process group (a new
session) so that a cancel reaches everything it started: SIGTERM to the group, SIGKILL after a
grace period. Its stdout and stderr are read in large chunks and cut into lines here (one
syscall per 64 KiB rather than per line); a line
longer than ``MAX_LINE`` bytes is emitted in pieces, cut on a UTF-8 character boundary, so a
runaway line cannot exhaust memory or stall the stream. Reading waits while the output buffer is
full, which leaves the agent blocked on its pipe: backpressure instead of unbounded memory.

The agent's stdin is the prompt, written and closed, or nothing; or, for a driver whose
invocation asks to ``converse`` (droid's stream-jsonrpc), a :class:`StdinChannel` the driver
keeps for the run: it writes requests and answers from its line handler while the pumps read,
and closes it when the turn is over. Everything else (deadline, cancel, bounds) is the same.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path

from worker_base import hooks, team
from worker_base.agents.base import AgentDriver, Event, Invocation
from worker_base.config import WrapperConfig
from worker_base.events import EventType
from worker_base.identity import AgentIdentity

log = logging.getLogger("worker_base")

MAX_LINE = 64 * 1024
READ_CHUNK = 64 * 1024
#: After the agent exits, how long its pipes may stay open (held by a child it left behind)
#: before the rest of its process group is killed.
DRAIN_GRACE = 2.0

#: ``done`` of an input that ran past its ``input_timeout_seconds`` (as GNU ``timeout`` says).
TIMED_OUT = 124

#: Variables of the wrapper the agent must not see: the Redis URL holds the worker's ACL
#: password, and with it the agent could write its own output stream or ack its inputs; the
#: create's ``env`` arrives as data (``WM_AGENT_ENV``) and is given to the agent as variables.
WRAPPER_ONLY_ENV = frozenset({"WM_REDIS_URL", "WM_AGENT_ENV"})

Sink = Callable[[list[Event]], Awaitable[None]]
LineHandler = Callable[[str], list[Event]]


def exit_status(returncode: int) -> int:
    """A shell-style exit status: killed by signal N is 128 + N."""
    return 128 - returncode if returncode < 0 else returncode


def agent_environment(
    config: WrapperConfig,
    invocation: Invocation,
    input_id: str,
    base: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The one place the agent's environment is assembled: the create's ``env`` (which only
    the agent's processes ever get), then the container's (the deployment's names win over the
    create's), the agent's own ``HOME`` (the wrapper's is root's), the driver's variables, and
    last the allowlist hook."""
    source = os.environ if base is None else base
    env = dict(config.agent_env)
    env.update((name, value) for name, value in source.items() if name not in WRAPPER_ONLY_ENV)
    if config.agent_home is not None:
        env["HOME"] = str(config.agent_home)
    # Python agents block-buffer a piped stdout; unbuffered, their lines stream as printed.
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.update(invocation.env)
    env["WM_INPUT_ID"] = input_id
    env = team.agent_env(config, env)
    if not invocation.confined:
        return env
    return hooks.agent_env(
        config, env, invocation.shell_prefix_env, keep_path=invocation.shims_by_agent
    )


class LineSplitter:
    """Bytes in, complete lines out (without ``\\n`` or ``\\r\\n``), decoded as UTF-8."""

    def __init__(self, max_line: int = MAX_LINE) -> None:
        self._max = max_line
        self._rest = b""

    def feed(self, chunk: bytes) -> list[str]:
        data = self._rest + chunk if self._rest else chunk
        parts = data.split(b"\n")
        rest = parts.pop()
        lines: list[str] = []
        if len(data) <= self._max:
            lines = [_decode(part) for part in parts]
        else:
            for part in parts:
                if len(part) <= self._max:
                    lines.append(_decode(part))
                else:
                    lines.extend(self._pieces(part))
            if len(rest) >= self._max:
                # Keep only the unfinished tail of a long line; the rest goes out now.
                cut = _last_cut(rest, self._max)
                lines.extend(self._pieces(rest[:cut]))
                rest = rest[cut:]
        self._rest = rest
        return lines

    def finish(self) -> list[str]:
        rest, self._rest = self._rest, b""
        return list(self._pieces(rest)) if rest else []

    def _pieces(self, data: bytes) -> list[str]:
        pieces: list[str] = []
        while len(data) > self._max:
            cut = _utf8_cut(data, self._max)
            pieces.append(data[:cut].decode("utf-8", "replace"))
            data = data[cut:]
        if data:
            pieces.append(_decode(data))
        return pieces


def _decode(raw: bytes) -> str:
    if raw.endswith(b"\r"):
        raw = raw[:-1]
    return raw.decode("utf-8", "replace")


def _utf8_cut(data: bytes, limit: int) -> int:
    """An index ≤ ``limit`` that does not split a UTF-8 sequence (``limit`` if none is near)."""
    cut = limit
    while cut > limit - 4 and cut > 0 and (data[cut] & 0xC0) == 0x80:
        cut -= 1
    return cut if cut > limit - 4 else limit


def _last_cut(data: bytes, limit: int) -> int:
    """Where to split ``data`` so that the part kept back is shorter than ``limit``."""
    cut = len(data) - len(data) % limit
    if cut == len(data):
        cut -= limit
    return _utf8_cut(data, cut) if 0 < cut < len(data) else cut


def _killpg(pgid: int, sig: signal.Signals) -> None:
    # Linux keeps a pid reserved while it names a live process group, so this cannot hit a
    # stranger's group after the leader has been reaped.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


class AgentRun:
    """One agent process for one input. ``cancel()`` may be called at any moment."""

    def __init__(
        self,
        config: WrapperConfig,
        driver: AgentDriver,
        input_id: str,
        prompt: str,
        sink: Sink,
    ) -> None:
        self._config = config
        self._driver = driver
        self._input_id = input_id
        self._prompt = prompt
        self._sink = sink
        self._identity = AgentIdentity.of(config)
        self._proc: asyncio.subprocess.Process | None = None
        self._terminator: asyncio.Task[None] | None = None
        self._deadline: float | None = None
        self.cancelled = False
        self.timed_out = False
        #: The process was started (``driver.on_exit`` was consulted).
        self.started = False

    def cancel(self) -> None:
        if self.cancelled:
            return
        self.cancelled = True
        proc = self._proc
        if proc is not None and proc.returncode is None:
            self._terminator = asyncio.create_task(self._terminate(proc), name="terminate")

    async def _terminate(self, proc: asyncio.subprocess.Process) -> None:
        _killpg(proc.pid, signal.SIGTERM)
        try:
            async with asyncio.timeout(self._config.cancel_grace):
                await proc.wait()
        except TimeoutError:
            log.warning("agent ignored SIGTERM for %.1f s; killing it", self._config.cancel_grace)
            _killpg(proc.pid, signal.SIGKILL)

    async def _error(self, sentence: str) -> None:
        await self._sink([Event(EventType.ERROR, sentence)])

    async def run(self) -> int:
        """Runs the agent to the end; returns its exit status (126/127 if it never started,
        124 if it ran past the input timeout). A driver may ask for one more attempt (a lost
        session): the input then runs again, within the same deadline."""
        timeout = self._config.input_timeout
        loop = asyncio.get_running_loop()
        self._deadline = None if timeout is None else loop.time() + timeout
        code = await self._attempt()
        retry = self._driver.take_retry() if self.started else None
        if retry is not None and not (self.cancelled or self.timed_out):
            log.info("input %s: running it again: %s", self._input_id, retry)
            await self._error(retry[:1].upper() + retry[1:] + ".")
            code = await self._attempt()
            self._driver.take_retry()  # at most one retry per input
        return code

    async def _attempt(self) -> int:
        self._proc, self._terminator = None, None
        try:
            invocation = self._driver.invocation(self._prompt)
        except Exception as exc:
            log.exception("the %s driver failed to prepare a run", self._config.agent_type)
            await self._error(f"The agent could not be prepared for this input: {exc}")
            return 126
        argv = invocation.argv
        if not argv:
            await self._error("The agent command is empty, so there is nothing to run.")
            return 127
        workdir = self._config.workdir
        if not workdir.is_dir():
            await self._error(f"The working directory {workdir} does not exist.")
            return 126
        env = agent_environment(self._config, invocation, self._input_id)
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL
                if invocation.stdin is None and not invocation.converse
                else asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                cwd=workdir,
                env=env,
                start_new_session=True,
                # As the agent's own user (worker_base.identity): not the wrapper's.
                **self._identity.spawn_options(),
            )
        except FileNotFoundError:
            await self._error(
                f"The agent program {argv[0]!r} was not found: it is not installed in this "
                "worker's image or not on its PATH."
            )
            return 127
        except PermissionError:
            await self._error(
                f"The agent program {argv[0]!r} could not be started: permission denied "
                "(is it executable?)."
            )
            return 126
        except (OSError, ValueError) as exc:
            await self._error(f"The agent program {argv[0]!r} could not be started: {exc}.")
            return 126
        self._proc = proc
        self.started = True
        log.info("input %s: started %s (pid %d)", self._input_id, Path(argv[0]).name, proc.pid)
        try:
            return await self._supervise(proc, invocation)
        finally:
            if proc.returncode is None:  # we are being torn down mid-run
                _killpg(proc.pid, signal.SIGKILL)

    async def _supervise(self, proc: asyncio.subprocess.Process, invocation: Invocation) -> int:
        if self.cancelled:  # cancelled while it was being started
            self._terminator = asyncio.create_task(self._terminate(proc), name="terminate")
        feeder = None
        channel = None
        if proc.stdin is not None and invocation.converse:
            channel = StdinChannel(proc.stdin)
            if invocation.stdin:
                channel.send_bytes(invocation.stdin)
            try:
                self._driver.converse(channel)
            except Exception:
                log.exception(
                    "the %s driver failed to start its conversation", self._config.agent_type
                )
                channel.close()
        elif proc.stdin is not None and invocation.stdin is not None:
            feeder = asyncio.create_task(_feed(proc.stdin, invocation.stdin), name="agent-stdin")
        assert proc.stdout is not None
        assert proc.stderr is not None

        async def sink(events: list[Event]) -> None:
            await self._sink(events)
            if self._driver.take_stop():  # e.g. max_turns for an agent without such a flag
                self.cancel()

        pumps = [
            _Pump(proc.stdout, self._driver.on_stdout, EventType.STDOUT, sink),
            _Pump(proc.stderr, self._driver.on_stderr, EventType.STDERR, sink),
        ]
        returncode = await self._wait_within_deadline(proc)
        if not await _all_eof(pumps, DRAIN_GRACE):
            log.warning("the agent left processes holding its output open; killing its group")
            _killpg(proc.pid, signal.SIGKILL)
            if not await _all_eof(pumps, 1.0):
                # Something outside the group (it called setsid) holds the pipe: stop reading.
                for pump in pumps:
                    pump.task.cancel()
        for pump in pumps:
            with contextlib.suppress(asyncio.CancelledError):
                await pump.task
        if feeder is not None:
            feeder.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await feeder
        if channel is not None:
            await channel.finish()
        if self._terminator is not None:
            await self._terminator
        code = TIMED_OUT if self.timed_out else exit_status(returncode)
        log.info("input %s: agent exited with %d", self._input_id, code)
        try:
            events = self._driver.on_exit(code)
        except Exception:
            log.exception("the %s driver failed in on_exit", self._config.agent_type)
            events = []
        if events:
            await self._sink(events)
        return code

    async def _wait_within_deadline(self, proc: asyncio.subprocess.Process) -> int:
        """The agent's return code; past the deadline its whole group is stopped (the real
        CLIs are known to hang now and then without ever printing a result)."""
        if self._deadline is None:
            return await proc.wait()
        remaining = self._deadline - asyncio.get_running_loop().time()
        try:
            async with asyncio.timeout(max(remaining, 0.0)):
                return await proc.wait()
        except TimeoutError:
            pass
        self.timed_out = True
        limit = self._config.input_timeout or 0.0
        log.warning("input %s: ran past %.3g s; stopping the agent", self._input_id, limit)
        await self._error(
            f"This input ran longer than its input_timeout_seconds ({limit:g} s), so the agent "
            "was stopped."
        )
        if self._terminator is None:
            self._terminator = asyncio.create_task(self._terminate(proc), name="terminate")
        return await proc.wait()


class _Pump:
    """Reads one of the agent's pipes to EOF and hands its lines to the driver."""

    def __init__(
        self, stream: asyncio.StreamReader, handler: LineHandler, kind: str, sink: Sink
    ) -> None:
        self._stream = stream
        self._handler = handler
        self._kind = kind
        self._sink = sink
        self.eof = asyncio.Event()
        self._handler_failed = False
        #: Waiting on the pipe (as opposed to on the output buffer).
        self.reading = False
        self.task = asyncio.create_task(self._run(), name=f"agent-{kind}")

    async def _run(self) -> None:
        splitter = LineSplitter()
        read = self._stream.read
        while True:
            self.reading = True
            chunk = await read(READ_CHUNK)
            self.reading = False
            if not chunk:
                break
            lines = splitter.feed(chunk)
            if lines:
                await self._sink(self._events(lines))
        self.eof.set()
        tail = splitter.finish()
        if tail:
            await self._sink(self._events(tail))

    def _events(self, lines: list[str]) -> list[Event]:
        handler = self._handler
        events: list[Event] = []
        for line in lines:
            try:
                events.extend(handler(line))
            except Exception:
                # A driver bug must not lose the agent's output: pass the line through raw.
                if not self._handler_failed:
                    self._handler_failed = True
                    log.exception("the driver failed on a %s line; passing lines raw", self._kind)
                events.append(Event(self._kind, line))
        return events


async def _all_eof(pumps: list[_Pump], grace: float) -> bool:
    """Whether both pipes reach EOF; only time spent waiting on the pipes counts towards
    ``grace``, not time a pump spends held back by a full output buffer."""
    waited = 0.0
    step = 0.05
    for pump in pumps:
        while not pump.eof.is_set():
            try:
                async with asyncio.timeout(step):
                    await pump.eof.wait()
            except TimeoutError:
                if any(p.reading for p in pumps):
                    waited += step
                    if waited >= grace:
                        return False
    return True


class StdinChannel:
    """The agent's stdin, kept open for a conversing driver (:class:`~worker_base.agents.base.
    AgentStdin`): ``send`` queues a line and returns at once (the driver calls it from its line
    handler, which must not block the pump); one task at a time drains the pipe, so an agent
    that is slow to read holds back only what is written to it, never its output. Closing
    flushes what was queued first (asyncio's transports write their buffer out before closing).
    """

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self._writer = writer
        self._closed = False
        self._broken = False
        self._drainer: asyncio.Task[None] | None = None

    @property
    def closed(self) -> bool:
        return self._closed or self._broken

    def send(self, line: str) -> None:
        self.send_bytes(line.encode("utf-8", "replace") + b"\n")

    def send_bytes(self, data: bytes) -> None:
        if self.closed or not data:
            return
        try:
            self._writer.write(data)
        except (BrokenPipeError, ConnectionResetError, RuntimeError):
            self._broken = True
            return
        if self._drainer is None or self._drainer.done():
            self._drainer = asyncio.create_task(self._drain(), name="agent-stdin")

    async def _drain(self) -> None:
        try:
            await self._writer.drain()
        except (OSError, RuntimeError):
            self._broken = True  # the agent closed its end: nothing more reaches it

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(BrokenPipeError, ConnectionResetError, RuntimeError):
            self._writer.close()

    async def finish(self) -> None:
        """After the process has ended: close, and stop waiting on a pipe nobody reads."""
        self.close()
        if self._drainer is not None and not self._drainer.done():
            self._drainer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._drainer


async def _feed(stdin: asyncio.StreamWriter, data: bytes) -> None:
    """Writes the prompt and closes stdin; an agent that never reads it is not an error."""
    try:
        stdin.write(data)
        await stdin.drain()
    except (BrokenPipeError, ConnectionResetError):
        pass
    finally:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            stdin.close()
