"""What a create needs, decided without Docker or Redis (``workers.transitions.create_plan``)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import SecretStr

from worker_manager.contract.commands import CreateCommand, parse_command
from worker_manager.contract.kinds import AgentType, Module, Shape
from worker_manager.contract.record import WorkerRecord
from worker_manager.settings import Settings
from worker_manager.workers.transitions.create_plan import RepositoryStep, plan_create
from worker_manager.workspaces.checkout import CheckedOut

WORKER = "3f2b8c1e-0d7a-4c55-9a51-2f0e6b1c9d42"


def settings(egress: Literal["on", "off"] = "off", **more: Any) -> Settings:
    return Settings(  # type: ignore[call-arg]
        _env_file=None,
        redis_url="redis://127.0.0.1:6390/0",
        worker_secret=SecretStr("x" * 32),
        egress=egress,
        **more,
    )


def create(s: Settings, **fields: str) -> CreateCommand:
    entry = {"command": "create", "agent_type": "CUSTOM", "agent_command": '["cat"]', **fields}
    entry = {name: value for name, value in entry.items() if value}  # "": not sent
    command = parse_command(entry, "1-0", s, replies=s.keys.replies)
    assert isinstance(command, CreateCommand)
    return command


def record(**fields: str) -> WorkerRecord:
    found = WorkerRecord.from_hash(WORKER, {"status": "STARTING", **fields})
    assert found is not None
    return found


def test_the_shape_and_what_is_copied_in() -> None:
    s = settings()
    plan = plan_create(
        create(
            s,
            agent_type="CLAUDE",
            agent_command="",
            modules='["GIT", "CURL"]',
            instructions="Be brief.",
        ),
        s,
        record(),
    )
    assert plan.shape == Shape(AgentType.CLAUDE, (Module.CURL, Module.GIT))
    assert plan.files == {"CLAUDE.md": "Be brief."}
    assert not plan.hand_over
    assert plan.docker_socket is None


def test_no_instructions_no_file() -> None:
    s = settings()
    assert plan_create(create(s), s, record()).files == {}
    assert plan_create(create(s, instructions="Do."), s, record()).files == {"AGENTS.md": "Do."}


def test_a_pooled_create_is_handed_over() -> None:
    s = settings()
    assert plan_create(create(s), s, record(pool="CUSTOM")).hand_over


def test_the_repository_step() -> None:
    s = settings()
    none = plan_create(create(s), s, record())
    assert none.repository is RepositoryStep.NONE
    assert none.checked_out == CheckedOut(commit="", branch=None, mirror=None)
    with_repo = create(s, repository='{"url": "https://example.com/r.git"}')
    clone = plan_create(with_repo, s, record())
    assert (clone.repository, clone.checked_out) == (RepositoryStep.CLONE, None)
    # A resume (or a create finished after a crash) finds the checkout in the record.
    done = plan_create(with_repo, s, record(workspace_base="abc123", mirror="wm-mirror-1"))
    assert done.repository is RepositoryStep.DONE
    assert done.checked_out == CheckedOut("abc123", None, "wm-mirror-1")


def test_containment_and_the_grant() -> None:
    open_ = settings()
    assert not plan_create(create(open_), open_, record()).contained
    on = settings("on", egress_default=["pypi.org:443"])
    plan = plan_create(create(on), on, record())
    assert plan.contained
    assert plan.egress == ("pypi.org:443",)  # the deployment's default when none is named
    granted = plan_create(create(on, egress='["example.com:443"]'), on, record())
    assert granted.egress == ("example.com:443",)
    assert plan_create(create(on, egress="[]"), on, record()).egress == ()


def test_a_redis_user_of_its_own_unless_acls_are_off() -> None:
    s = settings()
    assert plan_create(create(s), s, record()).own_redis_user
    off = settings(worker_acl=False)
    assert not plan_create(create(off), off, record()).own_redis_user


def test_the_docker_socket_only_for_the_docker_module_where_the_operator_chose_it() -> None:
    s = settings(docker_module="socket", docker_module_socket="/run/docker.sock")
    assert plan_create(create(s), s, record()).docker_socket is None
    docker = plan_create(create(s, modules='["DOCKER"]'), s, record())
    assert docker.docker_socket == "/run/docker.sock" and not docker.docker_engine
    default = settings(docker_module="socket")
    assert plan_create(create(default, modules='["DOCKER"]'), default, record()).docker_socket == (
        "/var/run/docker.sock"
    )


def test_the_docker_module_gets_an_engine_of_its_own_by_default() -> None:
    s = settings(docker_module_socket="/run/docker.sock")  # the socket alone is not a choice
    assert not plan_create(create(s), s, record()).docker_engine
    docker = plan_create(create(s, modules='["DOCKER"]'), s, record())
    assert docker.docker_engine and docker.docker_socket is None
    off = settings(docker_module="off")
    plan = plan_create(create(off, modules='["DOCKER"]'), off, record())
    assert not plan.docker_engine and plan.docker_socket is None
