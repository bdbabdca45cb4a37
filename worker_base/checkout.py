"""``python3 -m worker_base.checkout``: a worker's repository, checked out before it runs (SPEC §8).

Run by the manager in a short-lived container of the worker's own image, contained like a
worker (no network: the egress proxy through ``/run/wm``, granted the repository's host alone,
where the operator's git credentials are added), with two volumes:

* ``/var/lib/wm-mirror`` — the host's mirror of the repository (``repo.git``, bare), shared by
  every worker of that URL and written only here, never by an agent: the first checkout fetches
  the repository whole, later ones only what is new;
* ``/workspace`` — the worker's own workspace volume, still empty.

The workspace becomes a clone of the mirror that borrows its objects (``git clone --shared``:
nothing is copied, so the tenth worker of a large repository costs a checkout, not a fetch),
checked out at ``ref`` (on ``branch`` when given), with ``origin`` pointing back at the real
URL so the agent fetches and pushes through the proxy as usual. The worker's container mounts
the mirror read-only at the same path. With ``depth`` the mirror is shallow to that depth and
the workspace a copy of it; so is a workspace whose worker will not mount the mirror (a pooled
container, started before its repository was known: ``WM_CHECKOUT_SHARED`` unset). A checkout
that already finished (a create resumed after a crash) is reported, not repeated.

Prints one JSON line: ``{"ok": true, "commit", "branch"}`` or ``{"ok": false, "error"}`` with
git's own message (no credential can be in it: none is ever in a URL or a config here).
Configured by ``WM_CHECKOUT_URL``, ``WM_CHECKOUT_REF``, ``WM_CHECKOUT_BRANCH``,
``WM_CHECKOUT_DEPTH`` and ``WM_RELAYS`` (the proxy's loopback relay).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
from pathlib import Path

from worker_base.config import hide_url_credentials, relays_from_env
from worker_base.relays import LoopbackRelays
from worker_base.workspace import GIT, git_env

MIRROR_ROOT = Path("/var/lib/wm-mirror")
MIRROR = MIRROR_ROOT / "repo.git"
WORKSPACE = Path("/workspace")
#: git's message is cut to this (the last lines say what went wrong).
MAX_ERROR_CHARS = 1500


class CheckoutFailed(Exception):
    """git failed; the message is its own, cut to its last lines."""


def scrub(text: str) -> str:
    """git's message, bounded, without anything that looks like ``user:secret@`` in a URL."""
    text = hide_url_credentials(text.strip())
    return text if len(text) <= MAX_ERROR_CHARS else "…" + text[-MAX_ERROR_CHARS:]


async def git(*args: str, cwd: Path | None = None) -> str:
    env = {
        **git_env(),
        # Its way out: the proxy (the loopback relay this module runs) and the roots to trust.
        **{
            k: v
            for k, v in os.environ.items()
            if k.lower().endswith("_proxy") or k in ("GIT_SSL_CAINFO", "SSL_CERT_FILE")
        },
    }
    process = await asyncio.create_subprocess_exec(
        GIT,
        "-c",
        "core.hooksPath=/dev/null",
        "-c",
        "protocol.file.allow=always",
        *args,
        cwd=cwd,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate()
    if process.returncode != 0:
        raise CheckoutFailed(scrub(err.decode("utf-8", "replace")) or f"git {args[0]} failed")
    return out.decode("utf-8", "replace").strip()


async def update_mirror(url: str, depth: int | None) -> None:
    depth_args = ["--depth", str(depth)] if depth else []
    if not (MIRROR / "HEAD").exists():
        await git("clone", "--mirror", "--quiet", *depth_args, url, str(MIRROR))
        # Objects are borrowed by workspaces: never collected behind their backs.
        await git("config", "gc.auto", "0", cwd=MIRROR)
        return
    await git("remote", "set-url", "origin", url, cwd=MIRROR)
    if not depth and (MIRROR / "shallow").exists():
        depth_args = ["--unshallow"]
    await git("fetch", "--quiet", "--prune", "--tags", *depth_args, "origin", cwd=MIRROR)


async def resolve(ref: str) -> tuple[str, str | None]:
    """The commit ``ref`` names in the mirror, and the remote branch it is (None: a tag, a
    commit, or the remote's HEAD when that is detached)."""
    wanted = ref or "HEAD"
    try:
        commit = await git("rev-parse", "--verify", "--quiet", f"{wanted}^{{commit}}", cwd=MIRROR)
    except CheckoutFailed:
        raise CheckoutFailed(
            f"{wanted!r} is not a branch, tag or commit of the repository"
        ) from None
    branch: str | None = None
    if not ref:
        try:
            head = await git("symbolic-ref", "--quiet", "HEAD", cwd=MIRROR)
            branch = head.removeprefix("refs/heads/") if head.startswith("refs/heads/") else None
        except CheckoutFailed:
            branch = None
    else:
        try:
            await git("show-ref", "--verify", "--quiet", f"refs/heads/{ref}", cwd=MIRROR)
            branch = ref
        except CheckoutFailed:
            branch = None
    return commit, branch


async def check_out(
    url: str,
    commit: str,
    remote_branch: str | None,
    branch: str | None,
    depth: int | None,
    shared: bool,
) -> str | None:
    """The workspace, cloned from the mirror at ``commit``; the branch it is on (or None)."""
    if depth:
        await git("clone", "--quiet", "--no-checkout", "--depth", str(depth),
                  f"file://{MIRROR}", str(WORKSPACE))  # fmt: skip
    elif shared:
        await git("clone", "--quiet", "--no-checkout", "--shared", str(MIRROR), str(WORKSPACE))
    else:  # its own copy of the objects: the worker will not have the mirror mounted
        await git("clone", "--quiet", "--no-checkout", "--no-hardlinks", str(MIRROR),
                  str(WORKSPACE))  # fmt: skip
    await git("remote", "set-url", "origin", url, cwd=WORKSPACE)
    if branch:
        await git("checkout", "--quiet", "-b", branch, commit, cwd=WORKSPACE)
        return branch
    if remote_branch:
        await git("checkout", "--quiet", "-B", remote_branch, commit, cwd=WORKSPACE)
        await git("branch", "--quiet", "--set-upstream-to", f"origin/{remote_branch}",
                  cwd=WORKSPACE)  # fmt: skip
        return remote_branch
    await git("checkout", "--quiet", "--detach", commit, cwd=WORKSPACE)
    return None


async def already_checked_out() -> tuple[str, str | None] | None:
    """A checkout that finished before (a create resumed after a crash): its commit and
    branch; None when the workspace holds none."""
    if not (WORKSPACE / ".git").is_dir():
        return None
    try:
        commit = await git("rev-parse", "--verify", "--quiet", "HEAD^{commit}", cwd=WORKSPACE)
    except CheckoutFailed:
        return None
    try:
        branch: str | None = await git("symbolic-ref", "--quiet", "--short", "HEAD", cwd=WORKSPACE)
    except CheckoutFailed:
        branch = None
    return commit, branch


def clear_workspace() -> None:
    """An unfinished checkout's leftovers go: the workspace is not the agent's yet."""
    for entry in WORKSPACE.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


async def run() -> dict[str, object]:
    url = os.environ.get("WM_CHECKOUT_URL", "")
    ref = os.environ.get("WM_CHECKOUT_REF", "")
    branch = os.environ.get("WM_CHECKOUT_BRANCH", "") or None
    depth_text = os.environ.get("WM_CHECKOUT_DEPTH", "")
    depth = int(depth_text) if depth_text.isdigit() and int(depth_text) > 0 else None
    shared = os.environ.get("WM_CHECKOUT_SHARED") == "1"
    relays = LoopbackRelays(relays_from_env(os.environ))
    await relays.start()
    try:
        done = await already_checked_out()
        if done is not None:
            return {"ok": True, "commit": done[0], "branch": done[1]}
        clear_workspace()
        await update_mirror(url, depth)
        commit, remote_branch = await resolve(ref)
        on = await check_out(url, commit, remote_branch, branch, depth, shared)
    except CheckoutFailed as exc:
        return {"ok": False, "error": str(exc)}
    finally:
        await relays.close()
    return {"ok": True, "commit": commit, "branch": on}


def main() -> int:
    result = asyncio.run(run())
    sys.stdout.write(json.dumps(result) + "\n")
    return 0 if result.get("ok") else 1


if __name__ == "__main__":
    sys.exit(main())
