"""Figure 12: an environment's build, against the same ``docker build`` by hand.

Ours: :meth:`ImageService.ensure` of a CUSTOM image with an environment (``apt: [jq]`` and a
variable unique to the run, so nothing is cached), the manager's whole path: the image's hash,
the build grant at the egress service, the network sidecar, the build, the clean-up, the image
record. Baseline: ``docker build`` of the same generated Dockerfile and context
(``write_build_context``, a spec of another unique variable: the same work) through the same
kind of route (a sidecar opened untimed beforehand, ``--network container:<it>`` and the same
proxy build arguments). Both go through the run's own egress service to Debian's mirror; the
ratio is what the manager adds to a build that installs packages (goal ≤ 1.1).

Where the package hosts resolve to a non-public address (a site's own proxy, as on the
machines this is developed on), that address is granted literally, as an operator would in
``WM_BUILD_EGRESS``; the host's extra CAs (``/usr/local/share/ca-certificates``) are trusted.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import tempfile
import time
from pathlib import Path

from benchmarks.env import BenchEnv
from benchmarks.harness import Figure, alternate
from worker_manager.contract.egress import canonical_egress, non_public_kind
from worker_manager.contract.environments import EnvironmentSpec, ResolvedEnvironment
from worker_manager.contract.kinds import AgentType
from worker_manager.egress.control import EgressClient
from worker_manager.environments.build_network import EgressBuildNetwork
from worker_manager.images.build import write_build_context
from worker_manager.images.service import ImageService
from worker_manager.images.spec import ImageSpec
from worker_manager.settings import Settings
from worker_manager.settings.environments import DEFAULT_BUILD_EGRESS
from worker_manager.typing import BuildRoute

TITLE = "12. environment build (apt jq)"


def build_egress() -> list[str]:
    """The default package hosts, plus the non-public addresses they resolve to here."""
    entries = list(DEFAULT_BUILD_EGRESS)
    for host in ("deb.debian.org", "pypi.org", "files.pythonhosted.org"):
        try:
            infos = socket.getaddrinfo(host, None, socket.AF_INET)
        except OSError:
            continue
        for info in infos:
            address = str(info[4][0])
            if non_public_kind(ipaddress.ip_address(address)) is not None:
                entries += [f"{address}:80", f"{address}:443"]
    return canonical_egress(entries)


def _settings(env: BenchEnv) -> Settings:
    return Settings(  # type: ignore[call-arg]  # pydantic-settings' init-only argument
        _env_file=None,
        redis_url=env.server.url,
        key_prefix=env.prefix,
        manager_id=env.manager_id,
        base_image=env.base_image,
        egress_run_dir=env.egress_run_dir,
        build_egress=build_egress(),
        build_ca_files=sorted(Path("/usr/local/share/ca-certificates").glob("*.crt")),
        build_failure_ttl_seconds=0,
        build_timeout_seconds=900,
    )


def _environment(token: str, base: str) -> ResolvedEnvironment:
    spec = EnvironmentSpec.model_validate({"apt": ["jq"], "env": {"BENCH_TOKEN": token}})
    return ResolvedEnvironment(label=f"bench-{token}", spec=spec.with_base(base))


async def envbuild_figure(env: BenchEnv, runs: int) -> Figure:
    settings = _settings(env)
    egress = EgressClient(settings)  # the manager's service, already running
    network = EgressBuildNetwork(settings, env.docker, egress)
    images = ImageService(settings, env.redis, env.docker, build_network=network)

    async def ours(i: int) -> float:
        environment = _environment(f"{env.token}-ours-{i}", env.base_image)
        started = time.perf_counter()
        ref = await images.ensure(AgentType.CUSTOM, [], environment=environment)
        seconds = time.perf_counter() - started
        env.owns_image(ref.tag)
        return seconds

    async def by_hand(i: int) -> float:
        environment = _environment(f"{env.token}-hand-{i}", env.base_image)
        spec = await images.spec_for(AgentType.CUSTOM, [], environment)
        env.owns_image(spec.tag)
        async with network.route(spec.hash, spec.base_image) as route:
            started = time.perf_counter()
            await asyncio.to_thread(_docker_build, env, spec, route)
            return time.perf_counter() - started

    try:
        base, mine = await alternate(runs, by_hand, ours, warmup=0)
    except Exception as exc:  # no mirror reachable here, no base image...
        return Figure(
            name="envbuild",
            title=TITLE,
            unit="s",
            ours_label="ImageService.ensure",
            goal="ratio_max",
            bound=1.1,
            available=False,
            note=f"not measured: {type(exc).__name__}: {str(exc)[:300]}",
        )
    finally:
        await egress.close()
    return Figure(
        name="envbuild",
        title=TITLE,
        unit="s",
        ours_label="ImageService.ensure (grant, sidecar, build, record)",
        baseline_label="docker build, same Dockerfile and route",
        goal="ratio_max",
        bound=1.1,
        ours=mine,
        baseline=base,
    )


def _docker_build(env: BenchEnv, spec: ImageSpec, route: BuildRoute) -> None:
    """The same build as ``images.build.build_image`` runs, by hand: its context, network and
    build arguments."""
    with tempfile.TemporaryDirectory(prefix="wm-bench-build-") as tmp:
        write_build_context(spec, Path(tmp), {"bench.owner": env.manager_id})
        for chunk in env.docker.api.build(
            path=tmp,
            tag=spec.tag,
            rm=True,
            forcerm=True,
            pull=False,
            decode=True,
            network_mode=route.network_mode,
            buildargs=dict(route.build_args),
        ):
            if "error" in chunk:
                raise RuntimeError(str(chunk["error"])[:300])
