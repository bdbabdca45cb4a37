"""Services beside a worker (SPEC §9): which images they may run, their bounds, their start.

``WM_SERVICE_IMAGES`` lists the images a create's ``services`` may name as they are (an
environment of the catalogue, or an ad hoc spec where those are allowed, is a service image
too). A service's container is bounded like a worker's: ``WM_SERVICE_MEMORY`` (its own limit,
its ``/tmp`` and ``/run`` counted in it), the worker's CPU and process limits, and its volumes
counted in the worker's ``WM_CONTAINER_DISK``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, field_validator

from worker_manager.contract.environments import IMAGE_NAME


class ServiceSettings(BaseModel):
    service_images: list[str] = Field(
        default_factory=list,
        description="Images a create's services may run as they are (JSON list of image "
        "references present on each host); an environment's name or spec is allowed besides.",
    )
    service_memory: str = Field(
        default="1g",
        pattern=r"^[0-9]+[kmgKMG]?$",
        description="Each service container's memory limit (its /tmp and /run tmpfs count in it).",
    )
    service_tmp_size: str = Field(
        default="256m",
        pattern=r"^[0-9]+[kmgKMG]?$",
        description="The size of a service's /tmp and of its /run (tmpfs, counted in its memory).",
    )
    service_start_timeout_seconds: float = Field(
        default=120.0,
        gt=0,
        description="How long a service may take to answer on its port (or, without one, to "
        "stay up) before its worker is FAILED service_failed.",
    )

    # --- the DOCKER module (SPEC §9 "Docker inside a worker") ------------------------------
    docker_module: Literal["rootless", "socket", "off"] = Field(
        default="rootless",
        description="rootless: a DOCKER worker gets a Docker Engine of its own beside it; "
        "socket: the host's Engine (WM_DOCKER_MODULE_SOCKET, root-equivalent on the host); "
        "off: the DOCKER module is refused.",
    )
    docker_images: list[str] = Field(
        default_factory=list,
        description="Images of the host loaded into each new DOCKER worker's own engine (JSON "
        "list), so that `docker run` and `docker build` work inside without a registry.",
    )
    docker_preload_max_bytes: int = Field(
        default=2 * 1024**3,
        ge=0,
        description="The most WM_DOCKER_IMAGES may weigh together (as the host's Engine "
        "reports their size); more refuses the worker's start.",
    )

    @field_validator("service_images", "docker_images")
    @classmethod
    def _images(cls, value: list[str]) -> list[str]:
        for image in value:
            if not IMAGE_NAME.fullmatch(image):
                raise ValueError(f"{image[:80]!r} is not an image name")
        return value
