"""Worker images: the base, the templates, builds, prebuilds and the collector."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, Field, field_validator

from worker_manager.contract.kinds import Shape

#: The tag ``bootstrap-base`` gives the Debian image it builds; the default base image.
BOOTSTRAP_BASE_TAG = "worker-manager/base:bookworm"


class ImageSettings(BaseModel):
    base_image: str = BOOTSTRAP_BASE_TAG
    image_max_age_days: float = Field(default=7, gt=0)
    images_dir: Path | None = Field(
        default=None, description="Dockerfile templates; default: the packaged images/."
    )
    images_overlay: Path | None = Field(
        default=None,
        description="A directory shaped like images/ whose snippets override the packaged ones "
        "(and whose files/ is added to the build context): for site-specific or test agents.",
    )
    build_args: dict[str, str] = Field(
        default_factory=dict,
        description='ARG values for the image snippets, e.g. {"CLAUDE_CODE_VERSION": "2.1.0"}'
        " (JSON in WM_BUILD_ARGS); part of the image hash.",
    )
    prebuild: list[str] = Field(
        default_factory=list,
        description='Shapes built in the background at start-up (JSON list, e.g. ["CLAUDE", '
        '"CUSTOM+GIT"]); readiness does not wait, and a create of a shape being built joins it.',
    )
    build_lock_ttl_seconds: int = Field(default=60, ge=5)
    build_failure_ttl_seconds: int = Field(default=60, ge=0)
    build_timeout_seconds: float = Field(default=1800, gt=0)
    gc_interval_seconds: float = Field(default=86_400, gt=0, description="Image GC period.")
    gc_jitter_seconds: float = Field(
        default=3600, ge=0, description="Random extra delay per GC run, so managers spread out."
    )
    gc_initial_delay_seconds: float = Field(
        default=600, ge=0, description="The first GC run comes this long (plus jitter) after start."
    )
    gc_lock_ttl_seconds: float = Field(default=60, ge=5)
    gc_prune_build_cache: bool = True
    image_disk_budget_bytes: int | None = Field(
        default=None,
        ge=0,
        description="Also remove the least recently used images while theirs exceed this.",
    )

    @field_validator("prebuild")
    @classmethod
    def _prebuild_shapes(cls, value: list[str]) -> list[str]:
        return [str(Shape.parse(shape)) for shape in value]
