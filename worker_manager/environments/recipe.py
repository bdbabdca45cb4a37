"""An environment's Dockerfile steps (SPEC §9): at most two, whatever the spec holds.

Every step of the classic builder is a container commit (seconds on fuse-overlayfs), so a spec
becomes one ``ENV`` step (its ``env``, and ``PATH`` when it has ``pip``) and one ``RUN`` step
that does the rest in one shell: the operator's extra CAs fetched, ``apt-get update`` and
``install`` (lists removed after), the ``pip`` requirements installed, then each ``run`` line as
root, in order. The text depends on the spec alone (not on this host's CAs or proxy), so every
manager renders, hashes and builds the same image for the same spec; :data:`RECIPE_VERSION` is
part of the image's hash, so a change here rebuilds.

**Network.** A step that needs one runs in the network namespace of the build's sidecar
(``environments.build_network``), which has nothing but loopback: the proxy variables (Docker's
predefined build arguments, kept out of the image and its history) name the sidecar's relay to
the egress service, which lets through only ``WM_BUILD_EGRESS``.

**CAs.** On a host behind a TLS-inspecting proxy the package hosts' certificates are issued by
the operator's CAs (``WM_BUILD_CA_FILES``). They are never copied into the build context: a
``COPY`` layer would carry them in every image. The sidecar serves them on
``127.0.0.1:`` :data:`CA_PORT` instead (an empty answer when there are none); the ``RUN`` step
reads them into a scratch directory, makes a bundle of the image's own roots plus them, points
apt (``Acquire::https::CAInfo``), pip (``--cert``) and the run lines' TLS clients at it, and
removes the directory before the step ends: trusted during the build only, never by the image.

**pip.** Debian's ``python3`` is externally managed and has no pip, and the worker's wrapper
runs as root on the image's ``python3``: a package installed into the system's site-packages
could drop a ``.pth`` file, which ``site`` executes at every interpreter start, the root
wrapper's included. So requirements go into a virtual environment of their own,
:data:`VENV` (root-owned; ``python3-venv`` is installed when the base's interpreter cannot make
one), whose ``bin`` is put first on ``PATH``: the agent's ``python3``, ``pip`` and console
scripts are the environment's, and the system's site-packages stay as the base shipped them.
The wrapper is started with ``-I -S`` (``images.spec.isolated_python``), so even when
``python3`` on ``PATH`` is the environment's, no site-packages directory (and no ``.pth``) is
read by it.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterable

from worker_manager.contract.environments import EnvironmentSpec

#: Part of the image's hash: bump it when the text rendered for a spec changes.
RECIPE_VERSION = 1
#: The environment's virtual environment (``pip``), first on the image's ``PATH``.
VENV = "/opt/wm-env"
#: Where the build's sidecar serves the operator's extra CAs (PEM, possibly empty), on its
#: loopback: the build steps share its network namespace.
CA_PORT = 3130
#: Scratch space of the ``RUN`` step (the fetched CAs, the bundle), removed before it ends.
SCRATCH = "/tmp/wm-build"
#: What the recipe itself says in the build log when a ``run`` line fails (the package managers
#: speak for themselves: :func:`failure_lines`).
RUN_LINE_FAILED = "wm-env: run line"
#: Environment variables that point TLS clients at the build's bundle while the step runs.
_CA_VARIABLES = ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "PIP_CERT")
#: The image's own roots (Debian's ``ca-certificates``), when it has them.
_SYSTEM_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
#: Reads what the sidecar serves on :data:`CA_PORT` (no HTTP: the bytes, then EOF). Run with
#: the base's ``python3`` (every worker base has one: the wrapper runs on it).
_FETCH_CAS = (
    "import socket, sys; "
    f"s = socket.create_connection(('127.0.0.1', {CA_PORT}), 30); "
    "sys.stdout.buffer.write(s.makefile('rb').read())"
)


def needs_network(spec: EnvironmentSpec | None) -> bool:
    """Whether the build runs steps that fetch anything: apt, pip or run lines."""
    return spec is not None and bool(spec.apt or spec.pip or spec.run)


def _env_value(value: str) -> str:
    """A value inside a Dockerfile ``ENV`` step's double quotes, taken literally (no
    ``$VARIABLE`` substitution); the contract refuses newlines and control characters in it."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("$", "\\$") + '"'


def render_steps(spec: EnvironmentSpec | None) -> str:
    """The Dockerfile text of an environment: an ``ENV`` step, a ``RUN`` step, or neither."""
    if spec is None:
        return "# (no environment)"
    steps = [f"# environment recipe {RECIPE_VERSION}"]
    variables = [f"{name}={_env_value(value)}" for name, value in sorted(spec.env.items())]
    if spec.pip:
        variables.append(f'PATH="{VENV}/bin:$PATH"')  # the base's PATH, after the venv's
    if variables:
        steps.append("ENV " + " \\\n    ".join(variables))
    if needs_network(spec):
        steps.append("RUN " + " \\\n    ".join(_script(spec)))
    return "\n".join(steps)


def _script(spec: EnvironmentSpec) -> list[str]:
    """The ``RUN`` step's shell commands, each ending with ``;`` (joined into one line)."""
    bundle = f"{SCRATCH}/ca.pem"
    lines = [
        "set -eu;",
        f"mkdir -p {SCRATCH};",
        # The operator's CAs, from the sidecar; then the bundle: the image's roots plus them.
        f"python3 -I -S -c {shlex.quote(_FETCH_CAS)} > {SCRATCH}/extra.pem;",
        f"wm_bundle() {{ cat {_SYSTEM_BUNDLE} 2>/dev/null || true; cat {SCRATCH}/extra.pem; }};",
        f"wm_bundle > {bundle};",
        *(f"export {name}={bundle};" for name in _CA_VARIABLES),
    ]
    apt = [shlex.quote(package) for package in spec.apt]
    if spec.apt or spec.pip:
        apt_options = f"-o Acquire::https::CAInfo={bundle}"
        lines += [
            "export DEBIAN_FRONTEND=noninteractive;",
            f"wm_apt={shlex.quote(' '.join(apt))};",
        ]
        if spec.pip:  # a venv needs python3-venv where the interpreter lacks ensurepip
            lines.append(
                "if ! python3 -I -c 'import ensurepip, venv' >/dev/null 2>&1; then "
                'wm_apt="$wm_apt python3-venv ca-certificates"; fi;'
            )
        lines += [
            'if [ -n "$wm_apt" ]; then',
            f"apt-get {apt_options} update;",
            f"apt-get {apt_options} install -y --no-install-recommends $wm_apt;",
            "rm -rf /var/lib/apt/lists/*;",
            "fi;",
            f"wm_bundle > {bundle};",  # ca-certificates may have come with the packages
        ]
    if spec.pip:
        requirements = " ".join(shlex.quote(requirement) for requirement in spec.pip)
        lines += [
            f"[ -x {VENV}/bin/python ] || python3 -I -m venv {VENV};",
            f"{VENV}/bin/python -I -m pip install --no-cache-dir --disable-pip-version-check "
            f"--no-input --cert {bundle} -- {requirements};",
        ]
    for number, line in enumerate(spec.run, start=1):
        lines.append(
            f"sh -c {shlex.quote(line)} || {{ wm_rc=$?; "
            f'echo "{RUN_LINE_FAILED} {number} exited with $wm_rc" >&2; exit $wm_rc; }};'
        )
    lines.append(f"rm -rf {SCRATCH}")
    return lines


#: The lines a package manager ends with when it fails: apt's ``E:``, pip's ``ERROR:``, and
#: the recipe's own word for a failed run line.
_FAILURE = re.compile(rf"^(?:E: |ERROR: |{re.escape(RUN_LINE_FAILED)} )")
_FAILURE_CHARS = 600


def is_failure_line(line: str) -> bool:
    """Whether a build-log line is a package manager's (or a run line's) failure."""
    return bool(_FAILURE.match(line.strip()))


def failure_lines(lines: Iterable[str]) -> str:
    """What a failed build's package manager said, in its own words (``E: Unable to locate
    package nosuchpkg``; ``ERROR: No matching distribution found for nosuch-pkg``), distinct
    lines joined with ``; `` and bounded; empty when none of them spoke."""
    found: list[str] = []
    for line in lines:
        text = line.strip()
        if _FAILURE.match(text) and text not in found:
            found.append(text)
    joined = "; ".join(found)
    return joined if len(joined) <= _FAILURE_CHARS else joined[: _FAILURE_CHARS - 1] + "…"
