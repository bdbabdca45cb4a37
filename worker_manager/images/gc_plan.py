"""What the image collector would do, and why: a plan made from what Redis and Docker say.

Whose images: a deployment (one key prefix) only ever removes images labelled with its prefix
(``worker-manager.key_prefix``; images built before that label existed count as the default
prefix's). Two deployments sharing one Docker Engine therefore never delete each other's images,
even when both use the same shape: the non-owner's use only shows in its own Redis. Any image a
container uses (running or stopped) is kept, whoever owns it, and removals are never forced.

:func:`plan_rows` is a plain function over data (the ``<prefix>:images`` scores and one
:class:`Engine` snapshot from three Docker listings), so the plan costs the same for ten images
or a thousand records, and unit tests call it without Docker. ``gc_execute`` carries it out;
``gc_report`` shows it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from docker import DockerClient

from worker_manager.contract.labels import LABEL_HASH, LABEL_PREFIX
from worker_manager.core.clock import iso_from_unix, iso_now

DEFAULT_PREFIX = "worker"
Action = Literal["keep", "remove", "untag", "forget"]


@dataclass(slots=True)
class Row:
    """One image (or one record without an image) and what the collector does with it."""

    hash: str
    tag: str
    image_id: str | None
    size: int  # bytes this image adds beyond the parent it shares with others
    last_used: float | None
    action: Action
    reason: str
    adopted: bool = False
    created: float | None = None

    def as_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["last_used_at"] = iso_from_unix(self.last_used) if self.last_used else None
        return data


@dataclass(slots=True)
class Report:
    rows: list[Row]
    dry_run: bool
    max_age_seconds: float
    budget_bytes: int | None
    started_at: str = field(default_factory=iso_now)
    seconds: float = 0.0
    skipped: str | None = None  # why nothing ran (another collector holds the lock)
    freed_bytes: int = 0
    removed: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    build_cache_bytes: int | None = None
    prunes_build_cache: bool = False

    def planned_bytes(self) -> int:
        return sum(r.size for r in self.rows if r.action == "remove")

    def as_json(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "started_at": self.started_at,
            "seconds": round(self.seconds, 3),
            "skipped": self.skipped,
            "max_age_seconds": self.max_age_seconds,
            "budget_bytes": self.budget_bytes,
            "planned_bytes": self.planned_bytes(),
            "freed_bytes": self.freed_bytes,
            "build_cache_bytes": self.build_cache_bytes,
            "removed": self.removed,
            "errors": self.errors,
            "images": [r.as_json() for r in self.rows],
        }


def owned_by(labels: dict[str, str] | None, prefix: str) -> bool:
    label = (labels or {}).get(LABEL_PREFIX)
    return label == prefix if label is not None else prefix == DEFAULT_PREFIX


def age(seconds: float) -> str:
    if seconds >= 86_400:
        return f"{seconds / 86_400:.1f} d"
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{max(seconds, 0) / 60:.0f} min"


@dataclass(slots=True)
class Engine:
    """What Docker says, fetched once per plan."""

    labelled: list[dict[str, Any]]
    parents: dict[str, str]
    children: dict[str, int]
    sizes: dict[str, int]
    tagged: set[str]
    used_by: dict[str, list[str]]

    def unique_size(self, image_id: str, removing: set[str]) -> int:
        """Size minus that of the first ancestor that stays (a shared parent is not freed)."""
        parent = self.parents.get(image_id, "")
        while parent:
            stays = (
                parent not in removing
                and (parent in self.tagged or self.children.get(parent, 0) > 1)
            ) or parent in self.used_by
            if stays:
                return max(self.sizes.get(image_id, 0) - self.sizes.get(parent, 0), 0)
            parent = self.parents.get(parent, "")
        return self.sizes.get(image_id, 0)

    def ancestors(self, image_id: str) -> Iterable[str]:
        parent = self.parents.get(image_id, "")
        while parent:
            yield parent
            parent = self.parents.get(parent, "")


def read_engine(client: DockerClient) -> Engine:
    api = client.api
    labelled = api.images(filters={"label": LABEL_HASH})
    everything = api.images(all=True)
    parents = {str(i["Id"]): str(i.get("ParentId") or "") for i in everything}
    children: dict[str, int] = {}
    for parent in parents.values():
        if parent:
            children[parent] = children.get(parent, 0) + 1
    used_by: dict[str, list[str]] = {}
    for container in api.containers(all=True):
        names = container.get("Names") or [str(container.get("Id", ""))[:12]]
        used_by.setdefault(str(container.get("ImageID", "")), []).append(names[0].lstrip("/"))
    return Engine(
        labelled=labelled,
        parents=parents,
        children=children,
        sizes={str(i["Id"]): int(i.get("Size") or 0) for i in everything},
        tagged={str(i["Id"]) for i in everything if real_tags(i)},
        used_by=used_by,
    )


def real_tags(image: dict[str, Any]) -> list[str]:
    return [t for t in image.get("RepoTags") or [] if t != "<none>:<none>"]


def plan_rows(
    records: dict[str, float],
    engine: Engine,
    *,
    prefix: str,
    max_age: float,
    budget: int | None,
    now: float,
) -> list[Row]:
    """Every image and record with what to do and why: a plain function over what Redis
    (``records``: hash → last use) and Docker (``engine``) said, so tests call it directly."""
    cutoff = now - max_age
    by_tag: dict[str, dict[str, Any]] = {}
    dangling: list[dict[str, Any]] = []
    for labelled in engine.labelled:
        tags = real_tags(labelled)
        if not tags:
            dangling.append(labelled)
        for tag in tags:
            by_tag[tag] = labelled
    rows: list[Row] = []
    hashes = set(records)
    for labelled in engine.labelled:
        image_hash = str((labelled.get("Labels") or {}).get(LABEL_HASH, ""))
        if owned_by(labelled.get("Labels"), prefix) and f"worker:{image_hash}" in by_tag:
            hashes.add(image_hash)
    for image_hash in sorted(hashes):
        tag = f"worker:{image_hash}"
        image = by_tag.get(tag)
        last_used = records.get(image_hash)
        if image is None:
            rows.append(
                Row(
                    image_hash,
                    tag,
                    None,
                    0,
                    last_used,
                    "forget",
                    "image no longer exists: record dropped",
                )
            )
            continue
        image_id = str(image["Id"])
        created = float(image.get("Created") or 0)
        adopted = last_used is None
        if last_used is None:
            last_used = created
        row = Row(image_hash, tag, image_id, 0, last_used, "keep", "", adopted, created)
        note = " (adopted: no record; last use = creation)" if adopted else ""
        if not owned_by(image.get("Labels"), prefix):
            owner = (image.get("Labels") or {}).get(LABEL_PREFIX, DEFAULT_PREFIX)
            row.reason = f"built by deployment {owner!r}: left to its collector"
            row.adopted = False
        elif image_id in engine.used_by:
            users = engine.used_by[image_id]
            row.reason = f"in use by {len(users)} container(s): {', '.join(users[:3])}" + note
        elif last_used < cutoff:
            row.action = "remove"
            row.reason = f"unused for {age(now - last_used)} (> {age(max_age)})" + note
        else:
            row.reason = f"used {age(now - last_used)} ago" + note
        rows.append(row)
    for leftover in dangling:
        image_id = str(leftover["Id"])
        if not owned_by(leftover.get("Labels"), prefix):
            continue
        image_hash = str((leftover.get("Labels") or {}).get(LABEL_HASH, ""))
        created = float(leftover.get("Created") or 0)
        row = Row(
            image_hash,
            "<none>",
            image_id,
            0,
            None,
            "remove",
            "dangling (untagged) worker image",
            created=created,
        )
        if image_id in engine.used_by:
            row.action, row.reason = "keep", "dangling, but in use by a container"
        rows.append(row)
    _share_images(rows)
    _protect_parents(rows, engine)
    if budget is not None:
        _apply_budget(rows, engine, budget)
    removing = {r.image_id for r in rows if r.action == "remove" and r.image_id}
    for row in rows:
        if row.image_id:
            row.size = engine.unique_size(row.image_id, removing)
    return rows


def _share_images(rows: list[Row]) -> None:
    """An image removed by ID loses every tag: only when all of its hashes may go."""
    by_image: dict[str, list[Row]] = {}
    for row in rows:
        if row.image_id and row.tag != "<none>":
            by_image.setdefault(row.image_id, []).append(row)
    for group in by_image.values():
        kept = [r for r in group if r.action == "keep"]
        if not kept:
            continue
        for row in group:
            if row.action == "remove":
                row.action = "untag"
                row.reason += f"; image shared with kept {kept[0].tag[:19]}: tag removed"


def _protect_parents(rows: list[Row], engine: Engine) -> None:
    """An image some kept image (or container) builds on cannot go: keep it and say why."""
    removing = {r.image_id: r for r in rows if r.action == "remove" and r.image_id}
    if not removing:
        return
    stays = [i for i in engine.parents if i not in removing]
    for image_id in stays:
        for ancestor in engine.ancestors(image_id):
            row = removing.get(ancestor)
            if row is not None and row.action == "remove":
                row.action = "keep"
                row.reason += f"; but parent of kept image {image_id[7:19]}"


def _apply_budget(rows: list[Row], engine: Engine, budget: int) -> None:
    """Least recently used first, while the images we keep exceed the disk budget."""
    removing = {r.image_id for r in rows if r.action == "remove" and r.image_id}
    kept = [r for r in rows if r.action == "keep" and r.image_id and r.tag != "<none>"]
    total = sum(engine.unique_size(str(r.image_id), removing) for r in kept)
    candidates = sorted(
        (
            r
            for r in kept
            if r.image_id not in engine.used_by
            and not r.reason.startswith("built by")
            and "parent of" not in r.reason
        ),
        key=lambda r: r.last_used or 0,
    )
    for row in candidates:
        if total <= budget:
            break
        if sum(1 for r in rows if r.image_id == row.image_id) > 1:
            continue  # shared by several hashes: not worth the bookkeeping
        total -= engine.unique_size(str(row.image_id), removing)
        removing.add(str(row.image_id))
        row.action = "remove"
        row.reason += f"; over the disk budget of {human_bytes(budget)} (least recently used)"


def human_bytes(n: int) -> str:
    value = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if abs(value) < 1000:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} TB"
