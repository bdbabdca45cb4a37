"""Removing what a test session left on the shared Docker Engine, and nothing else.

Other sessions (and other people) use the same engine, so the sweep is narrow: containers whose
manager ID marks them as a test manager's, and worker images that appeared during this session
and that no container uses any more.
"""

from __future__ import annotations

import contextlib
import os
import secrets

import docker
import docker.errors

MANAGER_LABEL = "worker-manager.manager_id"
HASH_LABEL = "worker-manager.hash"
#: Every manager id of this test session starts with this, so the sweep at the end removes this
#: session's containers and never those of another session running on the same engine.
SESSION_MANAGER_PREFIX = f"test-{os.getpid():x}{secrets.token_hex(2)}-"


def worker_image_ids(client: docker.DockerClient) -> set[str]:
    return {str(image["Id"]) for image in client.api.images(filters={"label": HASH_LABEL})}


def remove_test_containers(
    client: docker.DockerClient, prefix: str = SESSION_MANAGER_PREFIX
) -> list[str]:
    """Force-remove every container this session's managers (or, with ``prefix``, one test's)
    created.

    Reads the raw listing (no per-container inspect), so a container another session removes
    at the same moment is simply skipped.
    """
    removed: list[str] = []
    for container in client.api.containers(all=True, filters={"label": MANAGER_LABEL}):
        labels = container.get("Labels") or {}
        if not str(labels.get(MANAGER_LABEL, "")).startswith(prefix):
            continue
        with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
            client.api.remove_container(container["Id"], force=True, v=True)
            removed.append(str(container["Id"]))
    return removed


def remove_test_volumes(
    client: docker.DockerClient, prefix: str = SESSION_MANAGER_PREFIX
) -> list[str]:
    """Force-remove every worker volume this session's managers created (after their
    containers: a volume in use is not removed)."""
    removed: list[str] = []
    listed = client.api.volumes(filters={"label": MANAGER_LABEL}).get("Volumes") or []
    for volume in listed:
        labels = volume.get("Labels") or {}
        if not str(labels.get(MANAGER_LABEL, "")).startswith(prefix):
            continue
        with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
            client.api.remove_volume(volume["Name"], force=True)
            removed.append(str(volume["Name"]))
    return removed


def remove_new_worker_images(
    client: docker.DockerClient, before: set[str], hashes: set[str]
) -> list[str]:
    """Remove worker images of ``hashes`` that were not there at session start, if unused.

    Not forced: an image another session's container still runs stays, and its tags with it.
    Reads the raw listing (no per-image inspect), so an image another session removes at the
    same moment is simply skipped.
    """
    removed: list[str] = []
    for image in client.api.images(filters={"label": HASH_LABEL}):
        image_id = str(image["Id"])
        if image_id in before or (image.get("Labels") or {}).get(HASH_LABEL) not in hashes:
            continue
        tags = [t for t in image.get("RepoTags") or [] if t != "<none>:<none>"]
        try:
            for tag in tags:
                client.images.remove(tag, noprune=False)
            if not tags:
                client.images.remove(image_id, noprune=False)
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError:
            continue  # in use by a container we do not own
        removed.append(image_id)
    return removed
