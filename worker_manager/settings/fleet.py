"""How big the fleet may grow and when workers give their room back: capacity, eviction,
reconciliation and the warm pools."""

from __future__ import annotations

from pydantic import BaseModel, Field, field_validator

from worker_manager.contract.kinds import Shape


class FleetSettings(BaseModel):
    max_workers: int = Field(default=50, ge=1)
    capacity_retry_after_seconds: float = Field(default=5.0, gt=0)
    idle_timeout_seconds: float = Field(default=900, gt=0)
    max_workers_per_owner: int | None = Field(
        default=None, ge=1, description="Live workers one metadata.owner may have (all managers)."
    )
    max_idle_timeout_seconds: float = Field(
        default=86_400, gt=0, description="Cap on a create's own idle_timeout_seconds."
    )
    max_lifetime_seconds: float | None = Field(
        default=None, gt=0, description="Workers older than this are stopped (reason=ttl)."
    )
    eviction_interval_seconds: float = Field(default=5.0, gt=0)
    reconcile_interval_seconds: float = Field(default=30.0, gt=0)
    warm_pool: dict[str, int] = Field(
        default_factory=dict,
        description='Started, unassigned workers kept ready per shape (JSON, e.g. {"CUSTOM": 2, '
        '"CLAUDE+GIT": 1}): a create of such a shape takes one instead of starting a container.',
    )
    warm_pool_max: int = Field(
        default=10, ge=0, description="Pooled (unassigned) containers this manager keeps at most."
    )
    warm_pool_interval_seconds: float = Field(
        default=2.0, gt=0, description="How often the pools are checked and refilled."
    )

    @field_validator("warm_pool")
    @classmethod
    def _pool_shapes(cls, value: dict[str, int]) -> dict[str, int]:
        pools: dict[str, int] = {}
        for shape, count in value.items():
            if count < 0:
                raise ValueError(f"warm pool of {shape!r}: a count cannot be negative")
            pools[str(Shape.parse(shape))] = count
        return pools
