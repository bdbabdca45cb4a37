"""Image hashing and Dockerfile generation (SPEC §5)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from worker_manager.contract.kinds import AgentType, Module
from worker_manager.images.agent_binaries import AgentBinary
from worker_manager.images.build import clean_log_line, write_build_context
from worker_manager.images.spec import ImageSpec, Templates, packaged_images_dir


def spec(
    modules: tuple[Module, ...] = (),
    agent: AgentType = AgentType.CUSTOM,
    base_id: str = "sha256:base",
    templates: Templates | None = None,
    build_args: tuple[tuple[str, str], ...] = (),
    binary: AgentBinary | None = None,
    base_has_user: bool = False,
) -> ImageSpec:
    return ImageSpec(
        base_image="worker-manager/base:bookworm",
        base_image_id=base_id,
        agent_type=agent,
        modules=modules,
        templates=templates or Templates(packaged_images_dir()),
        build_args=build_args,
        agent_binary=binary,
        base_has_worker_user=base_has_user,
    )


def test_hash_is_stable_and_tag_is_worker_hash() -> None:
    one, two = spec(), spec()
    assert one.hash == two.hash and len(one.hash) == 64
    assert one.tag == f"worker:{one.hash}"
    assert json.loads(one.canonical_json()) == one.canonical()


def test_hash_changes_with_every_input() -> None:
    base = spec().hash
    assert spec(modules=(Module.GIT,)).hash != base
    assert spec(agent=AgentType.CLAUDE).hash != base
    assert spec(base_id="sha256:other").hash != base
    assert spec(build_args=(("FACTORY_CLI_VERSION", "9"),)).hash != base
    assert spec(base_has_user=True).hash != base


def test_the_agent_binary_digest_and_version_are_part_of_the_hash(tmp_path: Path) -> None:
    one = AgentBinary("claude", tmp_path / "claude", "2.1.327", "a" * 64)
    with_binary = spec(agent=AgentType.CLAUDE, binary=one)
    assert with_binary.canonical()["agent_binary"] == one.identity()
    assert with_binary.hash != spec(agent=AgentType.CLAUDE).hash
    other_digest = AgentBinary("claude", one.path, one.version, "b" * 64)
    other_version = AgentBinary("claude", one.path, "2.1.328", one.sha256)
    assert spec(agent=AgentType.CLAUDE, binary=other_digest).hash != with_binary.hash
    assert spec(agent=AgentType.CLAUDE, binary=other_version).hash != with_binary.hash
    # Where the file lies on the manager's host is not part of what the image is.
    moved = AgentBinary("claude", tmp_path / "elsewhere", one.version, one.sha256)
    assert spec(agent=AgentType.CLAUDE, binary=moved).hash == with_binary.hash


def test_the_build_context_carries_the_agent_binary(tmp_path: Path) -> None:
    source = tmp_path / "droid"
    source.write_bytes(b"#!/bin/sh\necho droid\n")
    source.chmod(0o755)
    context = tmp_path / "context"
    context.mkdir()
    binary = AgentBinary("droid", source, "1.0", "c" * 64)
    write_build_context(spec(agent=AgentType.FACTORY, binary=binary), context)
    placed = context / "agent-bin" / "droid"
    assert placed.read_bytes() == source.read_bytes() and placed.stat().st_mode & 0o111
    assert "COPY agent-bin/droid /usr/local/bin/droid" in (context / "Dockerfile").read_text()


def test_build_log_lines_lose_terminal_escapes() -> None:
    line = "\x1b[1m\x1b[31mnpm ERR!\x1b[0m registry \x1b]8;;http://x\x07link\x1b]8;;\x07 down\r"
    assert clean_log_line(line) == "npm ERR! registry link down"


def test_module_order_does_not_matter() -> None:
    assert (
        spec(modules=(Module.GIT, Module.CURL)).hash == spec(modules=(Module.CURL, Module.GIT)).hash
    )


def test_template_content_is_part_of_the_hash(tmp_path: Path) -> None:
    overlay = tmp_path / "overlay"
    (overlay / "agents").mkdir(parents=True)
    (overlay / "agents" / "CUSTOM.Dockerfile").write_text("RUN true\n")
    with_overlay = spec(templates=Templates(packaged_images_dir(), overlay))
    assert with_overlay.hash != spec().hash
    before = with_overlay.hash
    (overlay / "agents" / "CUSTOM.Dockerfile").write_text("RUN echo changed\n")
    assert spec(templates=Templates(packaged_images_dir(), overlay)).hash != before


def test_wrapper_identity_is_in_the_spec() -> None:
    wrapper = spec().canonical()["wrapper"]
    assert wrapper["version"] and len(wrapper["digest"]) == 64
    assert set(wrapper["vendored"]) == {"redis", "async_timeout"}


def test_dockerfile_has_base_modules_agent_and_wrapper() -> None:
    text = spec(modules=(Module.GIT, Module.CURL), agent=AgentType.CLAUDE).dockerfile()
    assert text.splitlines()[[ln.startswith("FROM") for ln in text.splitlines()].index(True)] == (
        "FROM worker-manager/base:bookworm"
    )
    assert text.index("# module CURL") < text.index("# module GIT") < text.index("# agent CLAUDE")
    assert "COPY agent-bin/claude /usr/local/bin/claude" in text
    assert "npm install" not in text and "apt-get install" not in text.split("# agent CLAUDE")[1]
    assert "COPY worker-base/ /opt/worker-base/" in text
    assert "${" not in text
    # What a container gets when it is created is no build step (each is a container commit).
    steps = [ln.split()[0] for ln in text.splitlines() if ln and ln[0] not in "# "]
    assert not {"ENV", "ENTRYPOINT", "WORKDIR", "USER"} & set(steps), steps
    assert "ARG DEBIAN_FRONTEND=noninteractive" in text  # for the modules' apt-get
    labelled = spec().dockerfile({"worker-manager.hash": "h", "worker-manager.key_prefix": "p"})
    assert 'LABEL worker-manager.hash="h" worker-manager.key_prefix="p"' in labelled
    assert [ln.split()[0] for ln in spec().dockerfile().splitlines() if ln[:1].isupper()] == [
        "FROM",
        "COPY",
        "RUN",
    ]


def test_missing_module_template_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "Dockerfile.template").write_text("FROM ${base_image}\n${modules}\n${agent}\n")
    with pytest.raises(FileNotFoundError):
        spec(modules=(Module.GIT,), templates=Templates(tmp_path)).dockerfile()


def test_build_context_carries_the_wrapper_and_vendored_packages(tmp_path: Path) -> None:
    write_build_context(spec(), tmp_path)
    assert (tmp_path / "Dockerfile").read_text().startswith("#")
    assert (tmp_path / "worker-base" / "worker_base" / "__main__.py").is_file()
    assert (tmp_path / "worker-base" / "redis" / "asyncio" / "__init__.py").is_file()
    assert (tmp_path / "worker-base" / "async_timeout" / "__init__.py").is_file()
    assert not list(tmp_path.rglob("__pycache__"))


def test_a_base_with_the_worker_user_costs_no_run_step() -> None:
    """The bootstrapped base already has uid 1000 (its label says so): COPY and LABEL only."""
    from worker_manager.images.spec import LABEL_WORKER_USER, has_worker_user

    assert has_worker_user({LABEL_WORKER_USER: "1000:1000"})
    assert not has_worker_user({LABEL_WORKER_USER: "0:0"}) and not has_worker_user(None)
    text = spec(base_has_user=True).dockerfile({"worker-manager.hash": "h"})
    assert [ln.split()[0] for ln in text.splitlines() if ln[:1].isupper()] == [
        "FROM",
        "COPY",
        "LABEL",
    ]
    assert "useradd" in spec().dockerfile() and "useradd" not in text


def test_the_wrapper_starts_isolated_in_a_directory_and_home_of_roots() -> None:
    """Issue 24 §2 a: nothing the agent or a repository writes is on the root wrapper's path."""
    from worker_manager.images.spec import RUNTIME, WRAPPER_DIR, isolated_python

    assert RUNTIME.entrypoint[:2] == ("python3", "-I")
    assert RUNTIME.working_dir == "/"
    environment = dict(RUNTIME.environment)
    assert environment["HOME"] == "/root"
    assert not [name for name in environment if name.startswith("PYTHON")]
    # The bootstrap puts the wrapper's own directory first, and only that one.
    code = isolated_python("worker_base.checkout")[-1]
    assert f"sys.path.insert(0, {WRAPPER_DIR!r})" in code and "'worker_base.checkout'" in code
