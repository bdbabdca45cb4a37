"""What shapes a worker image, as canonical JSON; its SHA-256 is the image's tag (SPEC §5).

Everything that can change the built image is an input here: the base image (name and ID, so a
rebuilt base gives new worker images), the agent type, the sorted modules, the content of every
template file used, the environment's resolved spec (SPEC §9: its canonical form, and the
version of the recipe that renders it), the wrapper's version and the digest of its source, and
the versions of the dependencies vendored beside it. Nothing per-worker (instructions, prompt,
allowed commands) is.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import cache
from importlib import metadata
from pathlib import Path
from string import Template
from typing import Any

import worker_base
from worker_manager.contract.environments import EnvironmentSpec
from worker_manager.contract.kinds import AgentType, Module
from worker_manager.environments.recipe import RECIPE_VERSION, render_steps
from worker_manager.images.agent_binaries import AgentBinary

SCHEMA = 3
#: Every worker image carries its hash (SPEC §5) and the key prefix of the deployment that built
#: it: that deployment's collector is the one that may remove it.

#: Where the wrapper and its vendored packages are copied in the image.
WRAPPER_DIR = "/opt/worker-base"
WORKDIR = "/workspace"
#: Where a repository's mirror is mounted (worker_base.checkout): the worker's user owns the
#: directory in the image, so a new mirror volume (filled from it) is the checkout's to write.
MIRROR_DIR = "/var/lib/wm-mirror"
#: A base image labelled with this already has the worker's user, home and working directory
#: (:data:`WORKER_USER_SCRIPT` ran in it): the worker image then needs no RUN step for them.
#: The bootstrapped base is made that way (``worker_manager.images.bootstrap``).
LABEL_WORKER_USER = "worker-manager.worker-user"
WORKER_UID = 1000
#: Makes the worker's user (uid/gid 1000), its home and the working directory: one shell
#: script, run in the image build (a ``RUN`` step) or once in the bootstrapped base's rootfs.
WORKER_USER_SCRIPT = (
    f"(getent group {WORKER_UID} >/dev/null || groupadd --gid {WORKER_UID} worker)"
    f" && (getent passwd {WORKER_UID} >/dev/null || useradd --uid {WORKER_UID}"
    f" --gid {WORKER_UID} --create-home --home-dir /home/worker --shell /bin/sh worker)"
    f" && mkdir -p {WORKDIR} /home/worker/.wm {MIRROR_DIR}"
    f" && chown -R {WORKER_UID}:{WORKER_UID} {WORKDIR} /home/worker {MIRROR_DIR}"
)


def has_worker_user(labels: dict[str, str] | None) -> bool:
    """Whether a base image with these labels already carries the worker's user."""
    return (labels or {}).get(LABEL_WORKER_USER) == f"{WORKER_UID}:{WORKER_UID}"


#: The wrapper's home in a container: root's, on the read-only root filesystem. The agent's
#: (``/home/worker``, its own) is given to the agent's processes alone (``WM_AGENT_HOME``).
WRAPPER_HOME = "/root"


def isolated_python(module: str) -> tuple[str, ...]:
    """The argv that runs ``python3 -m <module>`` from :data:`WRAPPER_DIR` as root may: with
    ``-I`` (no ``PYTHON*`` variable, no user site-packages, neither the working directory nor a
    script's directory on ``sys.path``), so that ``sys.path`` is the image's own directories
    (root's, read-only) plus :data:`WRAPPER_DIR`, and nothing the agent or a repository wrote
    (an ``asyncio.py`` in ``/workspace``, a ``.pth`` or ``usercustomize.py`` under the agent's
    ``~/.local``) is ever imported by it. And with ``-S`` (no ``site``): no site-packages at
    all, so neither a package an environment installed (``environments.recipe``: its venv is
    first on ``PATH``, so ``python3`` may be the venv's) nor its ``.pth`` files run in the root
    wrapper; the wrapper needs only the standard library and what it vendors."""
    bootstrap = (
        f"import runpy, sys; sys.path.insert(0, {WRAPPER_DIR!r}); "
        f"runpy.run_module({module!r}, run_name='__main__', alter_sys=True)"
    )
    return ("python3", "-I", "-S", "-B", "-u", "-c", bootstrap)


@dataclass(frozen=True, slots=True)
class Runtime:
    """How a container of a worker image is run: set when it is created, not baked into the
    image as ENV/ENTRYPOINT/WORKDIR/USER steps (each one a container commit in the classic
    builder). The manager's container runtime and the benchmarks' direct start both use it.

    The wrapper runs as root, so nothing it starts from may be the agent's: its interpreter is
    isolated (:func:`isolated_python`), its working directory is ``/`` and its ``HOME`` is
    :data:`WRAPPER_HOME`, both root's and read-only. The agent still runs in
    :data:`WORKDIR` with its own home: the wrapper starts each agent process there
    (``worker_base.runner``)."""

    entrypoint: tuple[str, ...] = isolated_python("worker_base")
    working_dir: str = "/"
    environment: tuple[tuple[str, str], ...] = (
        ("LANG", "C.UTF-8"),
        ("HOME", WRAPPER_HOME),
    )


RUNTIME = Runtime()
#: Pure-Python packages copied beside the wrapper into every image.
VENDORED = ("redis", "async_timeout")
_DISTRIBUTIONS = {"redis": "redis", "async_timeout": "async-timeout"}


def packaged_images_dir() -> Path:
    """``images/`` of the checkout (editable install) or the copy shipped in the wheel."""
    package = Path(__file__).resolve().parent.parent  # worker_manager/
    for candidate in (package.parent / "images", package / "_images"):
        if (candidate / "Dockerfile.template").is_file():
            return candidate
    raise FileNotFoundError("worker-manager's images/ directory is missing from the install")


def wrapper_dir() -> Path:
    return Path(worker_base.__file__).resolve().parent


def _source_files(root: Path) -> list[Path]:
    return sorted(
        p
        for p in root.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.suffix not in {".pyc", ".pyo"}
    )


def digest_tree(root: Path) -> str:
    """SHA-256 over relative paths and contents: changes when any file does."""
    digest = hashlib.sha256()
    for path in _source_files(root):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()


@cache
def wrapper_identity() -> dict[str, Any]:
    """The wrapper's version and source digest, and the vendored versions (cached per process)."""
    return {
        "version": worker_base.__version__,
        "digest": digest_tree(wrapper_dir()),
        "vendored": {name: metadata.version(_DISTRIBUTIONS[name]) for name in VENDORED},
    }


@dataclass(frozen=True, slots=True)
class Templates:
    """The template files one image shape uses, resolved through an optional overlay."""

    root: Path
    overlay: Path | None = None

    def find(self, relative: str) -> Path | None:
        for base in (self.overlay, self.root):
            if base is not None and (base / relative).is_file():
                return base / relative
        return None

    def files_dir(self) -> Path | None:
        """Extra build-context files (``files/`` of the overlay, else of the root)."""
        for base in (self.overlay, self.root):
            if base is not None and (base / "files").is_dir():
                return base / "files"
        return None


@dataclass(frozen=True, slots=True)
class ImageSpec:
    base_image: str
    base_image_id: str
    agent_type: AgentType
    modules: tuple[Module, ...]
    templates: Templates
    #: ``ARG`` values for the snippets (e.g. ``FACTORY_CLI_VERSION``): part of the hash.
    build_args: tuple[tuple[str, str], ...] = ()
    #: The agent's snippet, when not ``agents/<AGENT_TYPE>.Dockerfile`` (e.g. the npm variant).
    agent_template: str | None = None
    #: The agent CLI put into the build context as ``agent-bin/<name>``: its digest and version
    #: are part of the hash.
    agent_binary: AgentBinary | None = None
    #: The base already has the worker's user (:func:`has_worker_user` of its labels).
    base_has_worker_user: bool = False
    #: The environment's spec, resolved (its ``base`` is :attr:`base_image`); None: none.
    environment: EnvironmentSpec | None = None

    @property
    def agent_snippet(self) -> str:
        return self.agent_template or f"agents/{self.agent_type.value}.Dockerfile"

    def used_templates(self) -> dict[str, Path]:
        used: dict[str, Path] = {}
        wanted = ["Dockerfile.template"]
        wanted += [f"modules/{m.value}.Dockerfile" for m in sorted(self.modules)]
        wanted.append(self.agent_snippet)
        for relative in wanted:
            path = self.templates.find(relative)
            if path is None:
                if relative.startswith("agents/") and self.agent_type is AgentType.CUSTOM:
                    continue
                raise FileNotFoundError(f"template {relative} not found in {self.templates.root}")
            used[relative] = path
        return used

    def canonical(self) -> dict[str, Any]:
        files = self.templates.files_dir()
        return {
            "schema": SCHEMA,
            "base_image": self.base_image,
            "base_image_id": self.base_image_id,
            "base_has_worker_user": self.base_has_worker_user,
            "agent_type": self.agent_type.value,
            "modules": sorted(m.value for m in self.modules),
            "templates": {
                rel: hashlib.sha256(path.read_bytes()).hexdigest()
                for rel, path in sorted(self.used_templates().items())
            },
            "files": digest_tree(files) if files else None,
            "build_args": dict(sorted(self.build_args)),
            "agent_binary": self.agent_binary.identity() if self.agent_binary else None,
            "environment": self.environment.canonical() if self.environment else None,
            "recipe": RECIPE_VERSION,
            "wrapper": wrapper_identity(),
        }

    def canonical_json(self) -> str:
        return json.dumps(self.canonical(), sort_keys=True, separators=(",", ":"))

    @property
    def hash(self) -> str:
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()

    @property
    def tag(self) -> str:
        return f"worker:{self.hash}"

    def dockerfile(self, labels: dict[str, str] | None = None) -> str:
        used = self.used_templates()
        modules = "\n".join(
            f"# module {m.value}\n" + used[f"modules/{m.value}.Dockerfile"].read_text().strip()
            for m in sorted(self.modules)
        )
        agent_path = used.get(self.agent_snippet)
        agent = (
            f"# agent {self.agent_type.value}\n" + agent_path.read_text().strip()
            if agent_path
            else f"# agent {self.agent_type.value}: nothing to install"
        )
        if modules:  # apt-get in a module snippet must not ask questions
            modules = "ARG DEBIAN_FRONTEND=noninteractive\n" + modules
        label_line = "# (no labels)"
        if labels:
            label_line = "LABEL " + " ".join(
                f"{k}={json.dumps(v)}" for k, v in sorted(labels.items())
            )
        if self.base_has_worker_user:
            worker_user = f"# the base has the worker's user ({LABEL_WORKER_USER}): no step"
        else:
            check = "import worker_base, redis.asyncio; print(worker_base.__version__)"
            worker_user = (
                f"RUN {WORKER_USER_SCRIPT} \\\n && PYTHONPATH={WRAPPER_DIR} python3 -c '{check}'"
            )
        template = Template(used["Dockerfile.template"].read_text())
        return template.substitute(
            base_image=self.base_image,
            modules=modules or "# (none)",
            agent=agent,
            environment=render_steps(self.environment),
            worker_user=worker_user,
            labels=label_line,
        )
