"""``python -m benchmarks [--quick] [--only NAME ...]``: run the figures, print, write JSON.

Quick mode (``make bench``) takes a few minutes when the standard CUSTOM image is cached; full
mode (``make bench-full``) takes the run counts the README's goals are stated for.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from benchmarks.against import against_figure
from benchmarks.agents_bench import agent_start_figure
from benchmarks.control import roundtrip_figures, throughput_figures
from benchmarks.dataplane import latency_figure, throughput_figure
from benchmarks.egress_bench import egress_figures
from benchmarks.env import AGENT_COMMAND, BenchEnv
from benchmarks.envbuild_bench import envbuild_figure
from benchmarks.environments_bench import docker_figures, environment_figures
from benchmarks.forks_bench import fork_figures
from benchmarks.gateway import gateway_figures, responses_figure
from benchmarks.gc_bench import gc_figure
from benchmarks.harness import Figure, console, machine, table, write_results
from benchmarks.hosts_bench import hosts_figures
from benchmarks.relay_designs import relay_figures
from benchmarks.scale import scale_figures
from benchmarks.sentinel_bench import sentinel_figures
from benchmarks.start import start_figures
from benchmarks.teams_bench import team_figures
from benchmarks.tenants_bench import tenant_figures
from benchmarks.workers import create_worker
from benchmarks.workspace_bench import workspace_figures

FIGURES = (
    "start",
    "agents",
    "control",
    "throughput",
    "data",
    "scale",
    "gc",
    "egress",
    "relays",
    "gateway",
    "workspace",
    "sentinel",
    "hosts",
    "envbuild",
    "envcreate",
    "services",
    "dockerin",
    "forks",
    "teams",
    "tenants",
    "against",
)
#: Figures that need neither the manager nor Docker (they bring their own processes).
STANDALONE = {"gateway", "sentinel", "hosts", "relays"}
#: Figures run only when named with ``--only`` (they need an argument).
ON_REQUEST = {"against"}


@dataclass(frozen=True, slots=True)
class Plan:
    name: str
    warm_runs: int
    cold_runs: int
    rt_runs: int
    tp_runs: int
    tp_window: float
    tp_levels: tuple[int, ...]
    lines: int
    data_runs: int
    latency_lines: int
    latency_runs: int
    sizes: tuple[int, ...]
    gc_records: int
    gc_runs: int
    gateway_ttfb_runs: int
    gateway_bytes: int
    gateway_runs: int
    egress_runs: int
    workspace_runs: int
    tenth_runs: int
    failover_runs: int
    envbuild_runs: int
    #: Figure 17b: workers in each of its two fleets (5 teams of them, and none).
    team_workers: int


QUICK = Plan(
    "quick",
    5,
    1,
    50,
    5,
    1.0,
    (1, 8, 64),
    10_000,
    5,
    50,
    5,
    (1, 10, 25),
    1000,
    5,
    30,
    4 << 20,
    5,
    10,
    3,
    1,
    2,
    3,
    25,
)
FULL = Plan(
    "full",
    20,
    20,
    200,
    20,
    1.5,
    (1, 8, 64),
    100_000,
    20,
    100,
    20,
    (1, 25, 100),
    1000,
    20,
    200,
    16 << 20,
    20,
    40,
    10,
    3,
    5,
    20,
    50,
)


async def run(plan: Plan, only: set[str], against: str | None = None) -> list[Figure]:
    figures: list[Figure] = []
    out = console()
    # First, so that a run of these alone needs no manager or Docker; listed last.
    standalone: list[Figure] = []
    if "gateway" in only:
        out.print("[bold]8. LLM gateway[/bold] (streamed calls, through it and direct)")
        standalone += await gateway_figures(
            plan.gateway_ttfb_runs, plan.gateway_bytes, plan.gateway_runs
        )
        standalone.append(await responses_figure(plan.gateway_ttfb_runs))
    if "relays" in only:
        out.print("[bold]7c. bare relays[/bold] (the same GET through relays without mitmproxy)")
        with tempfile.TemporaryDirectory(prefix="wm-relays-") as scratch:
            standalone += await relay_figures(Path(scratch), plan.egress_runs)
    if "sentinel" in only:
        out.print("[bold]10. Redis behind Sentinel[/bold] (round trips, then primaries killed)")
        standalone += await sentinel_figures(plan.rt_runs, plan.failover_runs)
    if "hosts" in only:
        out.print("[bold]11. many hosts[/bold] (Docker-in-Docker hosts: bursts, then hosts killed)")
        standalone += await hosts_figures(plan.failover_runs, plan.failover_runs)
    if not only - STANDALONE:
        return standalone
    env = BenchEnv()
    try:
        env.start()
        await env.start_manager()
        await env.start_echo()
        if "start" in only:
            out.print("[bold]1. start latency[/bold] (warm, then cold: builds take a while)")
            figures += await start_figures(env, plan.warm_runs, plan.cold_runs)
        if "agents" in only:
            out.print("[bold]1g. CODEX against CLAUDE[/bold] (create → RUNNING, images cached)")
            figures.append(await agent_start_figure(env, plan.warm_runs))
        fleet: list[str] = []
        if only & {"control", "throughput", "data", "scale"}:
            env.overlay.reset()
            fleet.append(await create_worker(env, AGENT_COMMAND, timeout=600))
        if "control" in only:
            out.print("[bold]2. status round trip[/bold]")
            figures += await roundtrip_figures(env, fleet[0], plan.rt_runs)
        if "throughput" in only:
            out.print("[bold]3. status throughput[/bold] (the top level with a build in flight)")
            figures += await throughput_figures(
                env, fleet[0], plan.tp_runs, plan.tp_window, plan.tp_levels
            )
        if "data" in only:
            out.print("[bold]4. data plane[/bold]")
            figures.append(await throughput_figure(env, fleet[0], plan.lines, plan.data_runs))
            figures.append(
                await latency_figure(env, fleet[0], plan.latency_lines, plan.latency_runs)
            )
        if "scale" in only:
            out.print(f"[bold]5. scale[/bold] {plan.sizes} idle workers")
            figures += await scale_figures(env, fleet, plan.sizes, plan.rt_runs)
        if "gc" in only:
            out.print("[bold]6. gc --dry-run[/bold]")
            figures.append(await gc_figure(env, plan.gc_records, plan.gc_runs))
        if "workspace" in only:
            out.print("[bold]9. workspaces[/bold] (checkouts of a 50 MB repository, resumes)")
            figures += await workspace_figures(env, plan.workspace_runs, plan.tenth_runs)
        if "egress" in only:
            out.print("[bold]7. egress proxy[/bold] (a GET through it and direct)")
            figures += await egress_figures(env, plan.egress_runs)
        if "envbuild" in only:
            out.print("[bold]12. environment build[/bold] (apt through the egress service)")
            figures.append(await envbuild_figure(env, plan.envbuild_runs))
        if only & {"envcreate", "services"}:
            out.print("[bold]13, 14. a cached environment, a service[/bold] (create → RUNNING)")
            wanted = frozenset(only & {"envcreate", "services"})
            figures += await environment_figures(env, plan.warm_runs, wanted)
        if "dockerin" in only:
            out.print("[bold]15. a DOCKER worker[/bold] (its start, its first inner docker run)")
            figures += await docker_figures(env, plan.warm_runs)
        if "forks" in only:
            out.print("[bold]16. fork and snapshots[/bold] (50 MB workspace: copies, creates)")
            figures += await fork_figures(env, plan.warm_runs, plan.workspace_runs)
        if "teams" in only:
            out.print(
                "[bold]17. teams[/bold] (a post → a teammate's event; the manager's CPU with "
                f"{plan.team_workers} workers in 5 teams, against as many in none)"
            )
            figures += await team_figures(env, plan.latency_runs, plan.warm_runs, plan.team_workers)
        if "tenants" in only:  # after the others: the manager serves 20 tenants from here on
            out.print("[bold]18. tenants[/bold] (status and create in a tenant; one of 20 floods)")
            figures += await tenant_figures(env, plan.rt_runs, plan.warm_runs, plan.warm_runs)
        if "against" in only and against:
            out.print(f"[bold]1e. cold create against {against}[/bold] (two builds a pair)")
            figures += await against_figure(
                env, against, max(plan.cold_runs, 3), max(plan.warm_runs, 5)
            )
    finally:
        await env.close()
    return figures + standalone


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="few runs: about 3 minutes")
    parser.add_argument(
        "--only",
        nargs="+",
        choices=FIGURES,
        metavar="NAME",
        help=f"run only these figures: {', '.join(FIGURES)}",
    )
    parser.add_argument(
        "--against",
        metavar="REF",
        help="with --only against: the commit whose cold create figure 1e compares with",
    )
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    only = set(args.only or set(FIGURES) - ON_REQUEST)
    if "against" in only and not args.against:
        parser.error("--only against needs --against REF")
    meta: dict[str, object] = {"mode": plan.name, "only": sorted(only), "machine": machine()}
    started = time.monotonic()
    figures = asyncio.run(run(plan, only, args.against))
    meta["seconds"] = round(time.monotonic() - started, 1)
    out = console()
    out.print(table(figures, title=f"worker-manager benchmarks ({plan.name}, {meta['seconds']} s)"))
    for f in figures:
        if f.note:
            out.print(f"[dim]{f.title}: {f.note}[/dim]")
    missed = [f.title for f in figures if f.met is False]
    if missed:
        out.print("[red]goals missed:[/red] " + "; ".join(missed))
    path = write_results(plan.name, figures, meta)
    out.print(f"figures written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
