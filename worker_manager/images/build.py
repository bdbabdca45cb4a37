"""One ``docker build`` of a worker image: its context, the classic builder's log, its failure.

The context is the generated Dockerfile, the wrapper with its vendored dependencies, the
templates' extra files and the agent's binary. The build log's ``Step N/M`` lines are progress;
its last lines are what a failed create's ``reason`` ends with (without terminal escapes), after
the package manager's own words when it failed (``environments.recipe.failure_lines``), so the
reason names the package. A build that installs an environment's packages runs on the route
its caller opened (``environments.build_network``); others on Docker's default network.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from collections import deque
from collections.abc import Callable
from importlib import import_module
from pathlib import Path
from typing import Any

import docker.errors
from docker import DockerClient

from worker_manager.contract.labels import LABEL_HASH, LABEL_PREFIX
from worker_manager.core.logs import get_logger
from worker_manager.environments.recipe import failure_lines, is_failure_line
from worker_manager.images import agent_binaries
from worker_manager.images.spec import VENDORED, ImageSpec, wrapper_dir
from worker_manager.typing import BuildRoute

log = get_logger(__name__)

_LOG_TAIL = 30
_LINE_CHARS = 200  # a create's ``reason`` must keep the log's *last* lines within its bound
_MESSAGE_CHARS = 3500  # the worker's ``reason`` is cut at 4000 characters
_STEP_IMAGE = re.compile(r"^ ---> ([0-9a-f]{12,64})$")
#: The classic builder's own count: "Step 3/9 : COPY ...".
_STEP_LINE = re.compile(r"^Step (\d+)/(\d+) :")
#: ``(step, steps)`` of a build in progress.
Progress = Callable[[int, int], None]
#: Terminal control sequences (colours, cursor moves) that build output carries: a ``reason``
#: is read in Redis and JSON, never on a terminal.
_ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[@-Z\\-_]")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def clean_log_line(line: str) -> str:
    """A build-log line without terminal escapes or control characters."""
    return _CONTROL.sub("", _ANSI.sub("", line))


class LogLines:
    """Whole lines out of a build's stream chunks, which are not cut at line ends: apt writes
    ``E: `` and the rest of its message apart, and the two may arrive in separate chunks (a
    reason must read ``E: Unable to locate package …`` whole)."""

    def __init__(self) -> None:
        self._pending = ""

    def feed(self, text: str) -> list[str]:
        """The lines ``text`` completes; an unfinished last line waits for the next chunk."""
        whole, _, self._pending = (self._pending + text).rpartition("\n")
        return whole.splitlines() if whole else []

    def flush(self) -> list[str]:
        """What is left at the end of the stream."""
        rest, self._pending = self._pending, ""
        return rest.splitlines()


class BuildFailed(Exception):
    """The image could not be built; ``message`` ends with the build log's last lines."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def build_image(
    client: DockerClient,
    spec: ImageSpec,
    *,
    key_prefix: str,
    timeout: float,
    progress: Progress = lambda _n, _m: None,
    route: BuildRoute | None = None,
) -> tuple[str, int]:
    """Classic builder, intermediate containers always removed (``forcerm``), log streamed.

    ``route``: the network of a build that installs packages (``--network container:<its
    sidecar>`` and the proxy's build arguments, ``environments.build_network``); without one,
    Docker's default, as for the modules' own snippets.

    A failed build would leave the image of its last good step behind as a dangling
    layer that nothing references: it is removed here. Its message starts with what the
    package manager said (``E: Unable to locate package …``), when it said anything.
    """
    tail: deque[str] = deque(maxlen=_LOG_TAIL)
    said: deque[str] = deque(maxlen=_LOG_TAIL)
    error: str | None = None
    last_step: str | None = None
    try:
        with tempfile.TemporaryDirectory(prefix="wm-build-") as tmp:
            context = Path(tmp)
            labels = {LABEL_HASH: spec.hash, LABEL_PREFIX: key_prefix}
            write_build_context(spec, context, labels)
            network: dict[str, Any] = {}
            if route is not None:
                network["network_mode"] = route.network_mode
            stream = client.api.build(
                path=str(context),
                tag=spec.tag,
                rm=True,
                forcerm=True,
                pull=False,
                decode=True,
                buildargs={**dict(spec.build_args), **(route.build_args if route else {})},
                timeout=int(timeout),
                **network,
            )
            lines = LogLines()

            def read(raws: list[str]) -> None:
                nonlocal last_step
                for raw in raws:
                    line = clean_log_line(raw)
                    if numbered := _STEP_LINE.match(line):
                        progress(int(numbered.group(1)), int(numbered.group(2)))
                    if is_failure_line(line):
                        said.append(line.strip()[:_LINE_CHARS])
                    if line.strip():
                        tail.append(line.rstrip()[:_LINE_CHARS])
                        log.debug("build", tag=spec.tag, line=line.rstrip())
                        step = _STEP_IMAGE.match(line.rstrip())
                        if step:
                            last_step = step.group(1)

            for chunk in stream:
                read(lines.feed(str(chunk.get("stream", ""))))
                if "error" in chunk:
                    read(lines.flush())
                    error = clean_log_line(str(chunk["error"])).strip()
                    tail.append(error[:_LINE_CHARS])
            read(lines.flush())
    except (docker.errors.DockerException, OSError) as exc:  # incl. requests' errors
        error = f"{type(exc).__name__}: {exc}"[:_LINE_CHARS]
    if error is not None:
        if last_step is not None:
            _drop_dangling(client, last_step)
        own_words = failure_lines(said)
        head = f"{own_words}\n" if own_words else ""
        head += f"building {spec.tag} failed: {error}\n"
        while tail and len(head) + sum(len(line) + 1 for line in tail) > _MESSAGE_CHARS:
            tail.popleft()  # keep the *last* lines within what a worker's reason holds
        raise BuildFailed(head + "\n".join(tail))
    image = client.images.get(spec.tag)
    return str(image.id), int(image.attrs.get("Size", 0))


def _drop_dangling(client: DockerClient, image_id: str) -> None:
    """Remove a failed build's last layer if nothing tags or builds on it."""
    try:
        attrs: dict[str, Any] = client.images.get(image_id).attrs
        if [t for t in attrs.get("RepoTags") or [] if t != "<none>:<none>"]:
            return
        full_id = str(attrs["Id"])
        children = [i for i in client.api.images(all=True) if i.get("ParentId") == full_id]
        if not children:
            client.api.remove_image(full_id, noprune=False)
    except docker.errors.APIError as exc:  # in use, or already gone: leave it
        log.debug("failed build layer kept", image=image_id, error=str(exc))


def write_build_context(
    spec: ImageSpec, context: Path, labels: dict[str, str] | None = None
) -> None:
    """Dockerfile, the wrapper with its vendored dependencies, and the templates' extra files.

    ``labels`` go into the Dockerfile as one ``LABEL`` step: passed to the build call instead,
    the classic builder adds one step (one container commit) per label."""
    (context / "Dockerfile").write_text(spec.dockerfile(labels))
    site = context / "worker-base"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(wrapper_dir(), site / "worker_base", ignore=ignore)
    for name in VENDORED:
        module: Any = import_module(name)
        shutil.copytree(Path(module.__file__).parent, site / name, ignore=ignore)
    files = spec.templates.files_dir()
    if files is not None:
        shutil.copytree(files, context / "files", symlinks=False, ignore=ignore)
    if spec.agent_binary is not None:
        agent_binaries.place(spec.agent_binary, context)
    (context / ".dockerignore").write_text("**/__pycache__\n")
    (context / "spec.json").write_text(json.dumps(spec.canonical(), indent=2, sort_keys=True))
