"""The wrapper's workspace requests on the host, as the wrapper's own user (SPEC §8)."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from tests.support.git_server import git
from worker_base.identity import AgentIdentity
from worker_base.workspace import Workspace, WorkspaceError, parse_numstat


@pytest.fixture
def repo(tmp_path: Path) -> Workspace:
    root = tmp_path / "ws"
    git("init", "-q", "-b", "main", str(root))
    (root / "a.txt").write_text("one\ntwo\n")
    (root / "bin.dat").write_bytes(b"\x00\x01")
    git("add", "-A", cwd=root)
    git("commit", "-qm", "first", cwd=root)
    base = git("rev-parse", "HEAD", cwd=root).strip()
    return Workspace(root, AgentIdentity(None, None), base=base, max_file_bytes=1024)


def test_paths_stay_in_the_workspace(repo: Workspace, tmp_path: Path) -> None:
    (tmp_path / "secret").write_text("s")
    (repo.root / "out").symlink_to(tmp_path)
    (repo.root / "in").symlink_to("a.txt")
    assert repo.resolve("in") == (repo.root / "a.txt").resolve()
    for bad, words in (
        ("../secret", "'..' is refused"),
        ("/etc/passwd", "is absolute"),
        ("out/secret", "leads outside"),
        ("", "non-empty"),
    ):
        with pytest.raises(WorkspaceError, match=words):
            repo.resolve(bad)


def test_read_list_write_and_their_bounds(repo: Workspace) -> None:
    assert base64.b64decode(repo.read("a.txt")["content"]) == b"one\ntwo\n"
    repo.write("deep/new.txt", base64.b64encode(b"x").decode())
    assert (repo.root / "deep" / "new.txt").read_bytes() == b"x"
    listed = {e["name"]: e["type"] for e in repo.listing(".")}
    assert listed["deep"] == "directory" and listed["a.txt"] == "file"
    (repo.root / "big").write_bytes(b"x" * 2048)
    with pytest.raises(WorkspaceError, match="at most 1024"):
        repo.read("big")
    with pytest.raises(WorkspaceError, match="at most 1024"):
        repo.write("big2", base64.b64encode(b"x" * 2048).decode())
    with pytest.raises(WorkspaceError, match="base64"):
        repo.write("x", "not base64!")
    with pytest.raises(WorkspaceError, match="does not exist"):
        repo.read("nope")
    with pytest.raises(WorkspaceError, match="not a file"):
        repo.read("deep")


async def test_the_summary_and_the_diff_against_where_it_started(repo: Workspace) -> None:
    (repo.root / "a.txt").write_text("one\n2\nthree\n")
    (repo.root / "new.txt").write_text("new\n")
    summary = await repo.summary()
    assert summary["branch"] == "main" and summary["head"] == repo.base
    assert summary["changed"] == [{"path": "a.txt", "added": 2, "removed": 1}]
    assert summary["untracked"] == 1
    diff = await repo.diff()
    assert "+three" in diff["patch"] and "new.txt" in diff["patch"]
    # The agent's own index is left as it was: new.txt is still untracked.
    assert "?? new.txt" in git("status", "--porcelain", cwd=repo.root)
    # A commit the agent makes still shows against the start.
    git("add", "-A", cwd=repo.root)
    git("commit", "-qm", "agent", cwd=repo.root)
    assert "+three" in (await repo.diff())["patch"]
    assert (await repo.summary())["changed"] == []


async def test_a_directory_that_is_no_repository_has_an_empty_summary(tmp_path: Path) -> None:
    plain = Workspace(tmp_path, AgentIdentity(None, None))
    assert await plain.summary() == {"head": None, "branch": None, "changed": [], "untracked": 0}
    with pytest.raises(WorkspaceError, match="not a git repository"):
        await plain.diff()


def test_numstat_is_read_with_binary_files_as_none() -> None:
    raw = b"2\t1\ta.txt\x00-\t-\tbin.dat\x00"
    assert parse_numstat(raw) == [
        {"path": "a.txt", "added": 2, "removed": 1},
        {"path": "bin.dat", "added": None, "removed": None},
    ]
