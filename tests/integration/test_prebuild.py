"""WM_PREBUILD: shapes built in the background at start-up; a create joins a build under way."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from tests.support.flows import Harness
from worker_manager.contract.kinds import Shape

pytestmark = [pytest.mark.docker, pytest.mark.redis, pytest.mark.build]


def test_shapes_are_parsed_and_normalised() -> None:
    assert str(Shape.parse("custom+git+curl")) == "CUSTOM+CURL+GIT"
    with pytest.raises(ValueError, match="FLOPPY"):
        Shape.parse("CLAUDE+FLOPPY")
    with pytest.raises(ValueError, match="ROBOT"):
        Shape.parse("ROBOT")


async def test_prebuild_runs_after_readiness_and_a_create_joins_it(
    harness: Harness, tmp_path: Path
) -> None:
    overlay = tmp_path / "overlay"
    (overlay / "agents").mkdir(parents=True)
    # A shape no other test has built, so this one builds it.
    (overlay / "agents" / "CUSTOM.Dockerfile").write_text(f"RUN echo {uuid.uuid4().hex}\n")
    manager = await harness.start(images_overlay=overlay, prebuild=["CUSTOM"])
    assert manager.images.builds == 0  # ready before the prebuild finished
    reply = await harness.client.create(agent_type="CUSTOM", agent_command=["cat"])
    assert reply.ok and reply.worker_id
    assert await harness.wait_status(reply.worker_id, "RUNNING", "FAILED", timeout=300) == "RUNNING"
    assert manager.images.builds == 1  # the create joined the prebuild: one build in all
