"""ensure_base_image: use what is there, explain what is not; bootstrap only the local default."""

from __future__ import annotations

import contextlib
import os
import secrets
from typing import Any, NoReturn

import docker
import pytest
import structlog
from structlog.testing import capture_logs

from tests.support.availability import unavailable
from worker_manager.images import bootstrap
from worker_manager.images.bootstrap import BootstrapError, ensure_base_image
from worker_manager.settings import BOOTSTRAP_BASE_TAG, Settings

LOG = structlog.get_logger()


def make_settings(base_image: str) -> Settings:
    return Settings(_env_file=None, base_image=base_image)  # type: ignore[call-arg]


def forbidden(*_: Any, **__: Any) -> NoReturn:
    raise AssertionError("must not be called when the base image is present")


def test_present_base_image_is_returned_without_pull_or_build(
    docker_client: docker.DockerClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = os.environ.get("WM_BASE_IMAGE") or BOOTSTRAP_BASE_TAG
    try:
        expected = docker_client.images.get(name).id
    except docker.errors.ImageNotFound:
        unavailable(f"base image {name} is missing: run `make base-image`")
    monkeypatch.setattr(bootstrap, "bootstrap_base_image", forbidden)
    monkeypatch.setattr(bootstrap, "_try_pull", forbidden)
    with capture_logs() as logs:
        assert ensure_base_image(make_settings(name), log=LOG) == expected
    assert [entry["event"] for entry in logs] == ["base_image.present"]


def test_missing_custom_base_image_raises_an_actionable_error(
    docker_client: docker.DockerClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    # .invalid never resolves (RFC 2606): the pull fails at once, here and on a networked CI.
    name = f"registry.invalid/wm-missing-{secrets.token_hex(4)}:none"
    monkeypatch.setattr(bootstrap, "bootstrap_base_image", forbidden)
    with pytest.raises(BootstrapError) as caught:
        ensure_base_image(make_settings(name), log=LOG)
    message = str(caught.value)
    assert f"worker-manager bootstrap-base --tag {name}" in message
    assert f"docker pull {name}" in message
    with pytest.raises(docker.errors.ImageNotFound):
        docker_client.images.get(name)


@pytest.mark.build
@pytest.mark.skipif(
    os.environ.get("WM_TEST_BOOTSTRAP") != "1" and os.environ.get("CI") != "true",
    reason="builds a Debian rootfs with debootstrap (~1 min, needs root and a Debian mirror); "
    "runs under CI=true, or set WM_TEST_BOOTSTRAP=1",
)
def test_missing_default_base_image_is_bootstrapped(
    docker_client: docker.DockerClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A throwaway tag stands in for the default, so the real base image is never touched.
    tag = f"worker-manager/base:bootstrap-test-{secrets.token_hex(4)}"
    monkeypatch.setattr(bootstrap, "BOOTSTRAP_BASE_TAG", tag)
    try:
        image_id = ensure_base_image(make_settings(tag), log=LOG)
        image = docker_client.images.get(tag)
        assert image.id == image_id
        assert image.labels.get("worker-manager.base") == "1"
        # The worker's user is in the base, so worker images need no RUN step for it.
        assert image.labels.get("worker-manager.worker-user") == "1000:1000"
        owners = docker_client.containers.run(
            tag,
            ["sh", "-c", "id -un; stat -c %u /workspace /home/worker/.wm"],
            remove=True,
            user="1000:1000",
        )
        assert owners.split() == [b"worker", b"1000", b"1000"]
        output = docker_client.containers.run(
            tag,
            ["python3", "-c", "import ssl, sys; print(sys.version_info[0])"],
            remove=True,
            user="1000:1000",
        )
        assert output.strip() == b"3"
    finally:
        with contextlib.suppress(docker.errors.ImageNotFound):
            docker_client.images.remove(tag, force=True)
