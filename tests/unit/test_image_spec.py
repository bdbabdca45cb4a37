"""Image hashing and Dockerfile generation (SPEC §5)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from worker_manager.image_spec import ImageSpec, Templates, packaged_images_dir
from worker_manager.images import write_build_context
from worker_manager.models import AgentType, Module


def spec(
    modules: tuple[Module, ...] = (),
    agent: AgentType = AgentType.CUSTOM,
    base_id: str = "sha256:base",
    templates: Templates | None = None,
    build_args: tuple[tuple[str, str], ...] = (),
) -> ImageSpec:
    return ImageSpec(
        base_image="worker-manager/base:bookworm",
        base_image_id=base_id,
        agent_type=agent,
        modules=modules,
        templates=templates or Templates(packaged_images_dir()),
        build_args=build_args,
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
    assert spec(build_args=(("CLAUDE_CODE_VERSION", "9"),)).hash != base


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
    assert "claude-code" in text
    assert 'ENTRYPOINT ["python3", "-m", "worker_base"]' in text
    assert "COPY worker-base/ /opt/worker-base/" in text
    assert "${" not in text.replace("${CLAUDE_CODE_VERSION}", "")


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
