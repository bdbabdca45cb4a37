"""``worker-manager team NAME`` (a team's members and board, ``--follow`` for new entries) and
``worker-manager team post NAME TEXT`` (a post from ``producer``, through the command stream)."""

from __future__ import annotations

import argparse
import json

from worker_manager.cli.common import command, console, err_console, with_api
from worker_manager.client.api import Client
from worker_manager.contract.teams import check_team_name
from worker_manager.settings import Settings


@command("team")
async def _team(args: argparse.Namespace, settings: Settings) -> int:
    words: list[str] = args.words
    posting = words[0] == "post" and len(words) > 1
    if posting and len(words) < 3:
        err_console.print("[red]usage: worker-manager team post NAME TEXT[/red]")
        return 2
    if not posting and len(words) != 1:
        err_console.print("[red]usage: worker-manager team NAME | team post NAME TEXT[/red]")
        return 2
    name = words[1] if posting else words[0]
    try:
        check_team_name(name)
    except ValueError as exc:
        err_console.print(f"[red]team name {name!r}: {exc}[/red]")
        return 2

    async def post(client: Client) -> int:
        entry_id = await client.team(name).post(" ".join(words[2:]))
        print(json.dumps({"entry_id": entry_id}) if args.json else entry_id, flush=True)
        return 0

    async def show(client: Client) -> int:
        team = client.team(name)
        entries = await team.board()
        told = await team.members(entries)
        if args.json:
            print(
                json.dumps(
                    {
                        "team": name,
                        "members": [m.as_dict() for m in told],
                        "board": [e.as_dict() for e in entries],
                    }
                ),
                flush=True,
            )
        else:
            console.print(f"team {name}: {len(told)} member(s)", markup=False)
            for member in told:
                note = f" ({member.note})" if member.note else ""
                changed = f"  changed {', '.join(member.changed)}" if member.changed else ""
                console.print(
                    f"  {member.worker_id}  {member.status or '-'}{note}  "
                    f"last seen {member.last_seen}{changed}",
                    markup=False,
                )
            for entry in entries:
                console.print(entry.line(), markup=False, soft_wrap=True)
        if not args.follow:
            return 0
        last = entries[-1].entry_id if entries else "0"
        async for entry in team.entries(after=last, follow=True):
            if args.json:
                print(json.dumps(entry.as_dict()), flush=True)
            else:
                console.print(entry.line(), markup=False, soft_wrap=True)
        return 0

    return await with_api(settings, args, post if posting else show)
