"""Services (SPEC §9) without Docker: the request's grammar and bounds, its resolution against the
deployment, the container a service gets, when it is ready, what the reconciler does with one,
and what is saved of a create that has some."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from tests.support.offline import offline_settings
from worker_base.config import ConfigError, WrapperConfig
from worker_manager.contract.commands import CreateCommand, parse_command
from worker_manager.contract.create_spec import load_spec, spec_of
from worker_manager.contract.environments import (
    EnvironmentSpec,
    ResolvedEnvironment,
    parse_spec,
)
from worker_manager.contract.labels import LABEL_SERVICE_OF, LABEL_WORKER
from worker_manager.contract.record import WorkerRecord
from worker_manager.contract.services import MAX_SERVICES, ResolvedService, parse_services
from worker_manager.core.errors import InvalidCommand
from worker_manager.egress.grants import PROXY_URL
from worker_manager.services import plan
from worker_manager.services.resolve import resolve
from worker_manager.services.runtime import ServiceState
from worker_manager.services.starter import Prepared, failure, ports_of
from worker_manager.workers.watching.reconciler import FoundService, exit_code_of, service_steps
from worker_manager.workers.watching.service_exits import exit_message

BASE = "worker-manager/base:bookworm"


settings = offline_settings


def one(**fields: Any) -> dict[str, Any]:
    return {"name": "db", "image": "postgres:16", **fields}


# --- the request ----------------------------------------------------------------------------
def test_services_parse_from_json_text_and_keep_their_parts() -> None:
    (service,) = parse_services(
        json.dumps([one(command=["postgres", "-k", "/tmp"], env={"PGDATA": "/data"}, port=5432)])
    )
    assert service.name == "db" and service.image == "postgres:16"
    assert service.command == ("postgres", "-k", "/tmp")
    assert service.env == {"PGDATA": "/data"} and service.port == 5432
    # An environment spec as the image, as an object or as JSON text.
    (spec,) = parse_services([one(image={"apt": ["redis-server"]})])
    assert isinstance(spec.image, EnvironmentSpec) and spec.image.apt == ("redis-server",)
    (text,) = parse_services([one(image='{"apt": ["redis-server"]}')])
    assert text.image == spec.image
    assert parse_services("") == () and parse_services(None) == ()


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ("{", "must be a JSON list"),
        ({"name": "db"}, "must be a JSON list"),
        ([one(name="DB")], "is not a service name"),
        ([one(name="a" * 32)], "is not a service name"),
        ([one(), one()], "'db' is used twice"),
        ([one(image="")], "an image name"),
        ([one(image="not an image")], "is not an image or environment name"),
        ([one(image={"apt": ["Bad_Pkg"]})], "apt"),
        ([one(command=[])], "non-empty JSON list"),
        ([one(command="postgres")], "non-empty JSON list"),
        ([one(command=["a\x00b"])], "no NUL"),
        ([one(command=["x"] * 65)], "at most 64"),
        ([one(env={"HTTP_PROXY": "http://elsewhere"})], "HTTP_PROXY"),
        ([one(env={"WM_X": "1"})], "WM_X"),
        ([one(port=0)], "a port is an integer"),
        ([one(port=70000)], "a port is an integer"),
        ([one(port=True)], "a port is an integer"),
        ([one(volumes=["/"])], "is not part of a service"),
        ([{"image": "postgres:16"}], "name: is required"),
        ([one(name=f"s{i}") for i in range(MAX_SERVICES + 1)], f"at most {MAX_SERVICES}"),
    ],
)
def test_malformed_services_are_named(value: Any, words: str) -> None:
    with pytest.raises(ValueError, match=re.escape(words)):
        parse_services(value)


def test_a_create_with_bad_services_is_invalid_naming_the_field() -> None:
    s = settings()
    fields = {"command": "create", "agent_type": "CUSTOM", "agent_command": '["cat"]'}
    with pytest.raises(InvalidCommand) as caught:
        parse_command({**fields, "services": '[{"name": "x"}]'}, "1-0", s, replies=s.keys.replies)
    assert caught.value.field == "services"
    assert "services" in caught.value.message and "image" in caught.value.message


# --- resolution against the deployment ------------------------------------------------------
def test_images_resolve_to_the_operators_list_or_an_environment() -> None:
    s = settings(
        service_images=["postgres:16"],
        environments={"cache": parse_spec({"apt": ["redis-server"]})},
    )
    listed, named, adhoc = resolve(
        parse_services(
            [
                one(),
                {"name": "cache", "image": "cache", "command": ["redis-server"]},
                {"name": "jq", "image": {"apt": ["jq"]}, "command": ["sleep", "1"]},
            ]
        ),
        s,
    )
    assert listed.image == "postgres:16" and listed.environment is None
    assert named.environment is not None and named.environment.label == "cache"
    assert named.environment.spec.base == BASE  # filled in: the image never changes later
    assert adhoc.environment is not None and adhoc.environment.label.startswith("sha256:")
    assert adhoc.label == adhoc.environment.label and listed.label == "postgres:16"


@pytest.mark.parametrize(
    ("services", "more", "words"),
    [
        ([one()], {}, "image 'postgres:16' is neither in this deployment's WM_SERVICE_IMAGES"),
        ([one(image={"env": {"A": "1"}}, command=["x"])], {"environments_adhoc": "off"}, "ADHOC"),
        ([one(image={"base": "debian:12"}, command=["x"])], {}, "base 'debian:12' is not allowed"),
        ([one(image={"env": {"A": "1"}})], {}, "give the service a command"),
        (
            [one()],
            {"service_images": ["postgres:16"], "container_runtime": "runsc"},
            "gVisor",
        ),
    ],
)
def test_refused_images_name_the_service(
    services: list[dict[str, Any]], more: dict[str, Any], words: str
) -> None:
    with pytest.raises(InvalidCommand) as caught:
        resolve(parse_services(services), settings(**more))
    message = caught.value.message
    assert message.startswith("field 'services': service 'db'") and words in message, message
    assert caught.value.field == "services"


def test_a_saved_create_keeps_its_services_resolved() -> None:
    s = settings(service_images=["postgres:16"])
    fields = {"command": "create", "agent_type": "CUSTOM", "agent_command": '["cat"]'}
    command = parse_command(
        {**fields, "services": json.dumps([one(port=5432)])}, "1-0", s, replies=s.keys.replies
    )
    assert isinstance(command, CreateCommand)
    resolved = resolve(command.services, s)
    saved = json.loads(json.dumps(spec_of(command, [], None, resolved)))
    loaded = load_spec(saved)
    assert loaded.services == resolved
    assert isinstance(loaded.services[0], ResolvedService)


# --- the container --------------------------------------------------------------------------
def facts(**attrs: Any) -> plan.ImageFacts:
    return plan.ImageFacts.of({"Config": attrs})


def test_image_facts_read_tcp_ports_and_volumes() -> None:
    found = facts(
        ExposedPorts={"6379/tcp": {}, "53/udp": {}, "80": {}, "bad/tcp": {}},
        Volumes={"/data": {}, "relative": {}},
    )
    assert found.ports == (80, 6379) and found.volumes == ("/data",)
    assert plan.ImageFacts.of({}) == plan.ImageFacts()


def test_ready_is_the_services_port_else_the_images_else_none() -> None:
    service = ResolvedService(name="db", image="x")
    assert plan.ready_port(service, facts()) is None
    assert plan.ready_port(service, facts(ExposedPorts={"5432/tcp": {}})) == 5432
    assert plan.ready_port(service.model_copy(update={"port": 7}), facts()) == 7
    prepared = [
        Prepared(service, "x", "", facts(ExposedPorts={"5432/tcp": {}})),
        Prepared(service.model_copy(update={"port": 80}), "y", "", facts()),
        Prepared(service, "z", "", facts()),
    ]
    assert ports_of(prepared) == (80, 5432)


def options(service: ResolvedService, found: plan.ImageFacts, contained: bool = True) -> Any:
    return plan.container_options(
        settings(service_memory="256m"),
        worker_id="w1",
        worker_container="worker-w1",
        worker_container_id="abc123",
        service=service,
        image_tag="img",
        image_hash="h",
        facts=found,
        contained=contained,
    )


def test_a_services_container_is_contained_like_its_worker() -> None:
    service = ResolvedService(name="db", image="postgres:16", command=("-c", "fsync=off"))
    made = options(service, facts(Volumes={"/var/lib/postgresql/data": {}}))
    assert made["name"] == "worker-w1-svc-db"
    assert made["network_mode"] == "container:abc123"  # the worker's namespace, nothing else
    assert "network" not in made and "ports" not in made
    assert made["security_opt"] == ["no-new-privileges:true"]
    assert made["cap_drop"] == ["ALL"] and set(made["cap_add"]) == set(plan.SERVICE_CAPABILITIES)
    assert not {"NET_RAW", "NET_ADMIN", "SYS_ADMIN"} & set(made["cap_add"])
    assert made["read_only"] is True and set(made["tmpfs"]) == {"/tmp", "/run"}
    assert made["mem_limit"] == made["memswap_limit"] == "256m"
    assert made["pids_limit"] > 0 and made["nano_cpus"] > 0
    # Its data in volumes of the worker's (counted in its disk, removed with it).
    (mount,) = made["mounts"]
    assert mount["Target"] == "/var/lib/postgresql/data"
    assert mount["VolumeOptions"]["Labels"][LABEL_WORKER] == "w1"
    # Its container is not the worker's: the watcher and the reconciler tell them apart.
    assert LABEL_WORKER not in made["labels"] and made["labels"][LABEL_SERVICE_OF] == "w1"
    # The image's own entry point, with the service's command as its arguments.
    assert "entrypoint" not in made and made["command"] == ["-c", "fsync=off"]
    # Only the worker's proxy as a way out; no operator secret, no socket.
    env = made["environment"]
    assert env["HTTP_PROXY"] == env["https_proxy"] == PROXY_URL
    assert not [name for name in env if name.startswith(("WM_", "ANTHROPIC", "OPENAI"))]
    assert not [m for m in made["mounts"] if "sock" in str(m.get("Source"))]
    # Not contained (WM_EGRESS=off): no proxy to name.
    assert "HTTP_PROXY" not in options(service, facts(), contained=False)["environment"]


def test_an_environments_service_runs_its_command_as_the_whole_argv_in_data() -> None:
    spec = parse_spec({"apt": ["redis-server"]}).with_base(BASE)
    service = ResolvedService(
        name="cache",
        environment=ResolvedEnvironment(label=spec.digest, spec=spec),
        command=("redis-server", "--dir", "/data"),
    )
    made = options(service, facts())
    assert made["entrypoint"] == ["redis-server", "--dir", "/data"] and made["command"] == []
    assert made["working_dir"] == plan.DATA_DIR
    assert [m["Target"] for m in made["mounts"]] == [plan.DATA_DIR]


def test_a_failed_services_reason_quotes_the_end_of_its_log() -> None:
    state = ServiceState(running=False, exit_code=1, log_tail="starting\nFATAL: no space\n")
    assert failure(state) == "exited with code 1: starting | FATAL: no space"
    assert failure(ServiceState(running=False, oom=True)) == "exited (out of memory)"
    assert failure(ServiceState(running=False, exit_code=0)) == "exited with code 0"
    assert len(failure(ServiceState(running=False, exit_code=2, log_tail="x" * 5000))) < 450
    assert exit_message("db", 3) == "service 'db' exited with code 3"


# --- the reconciler -------------------------------------------------------------------------
def record(status: str) -> WorkerRecord:
    found = WorkerRecord.from_hash("w", {"status": status})
    assert found is not None
    return found


def test_the_reconciler_removes_services_of_ended_or_sleeping_workers_only() -> None:
    def found(worker: str, state: str = "running") -> FoundService:
        return FoundService(worker, "db", state, 0 if state == "exited" else None)

    services = [
        found("gone"),
        found("stopped"),
        found("sleeping"),
        found("starting", "exited"),
        found("running"),
        found("crashed", "exited"),
        found("busy"),
    ]
    records = {
        "gone": None,
        "stopped": record("STOPPED"),
        "sleeping": record("SUSPENDED"),
        "starting": record("STARTING"),
        "running": record("RUNNING"),
        "crashed": record("RUNNING"),
        "busy": None,
    }
    steps = [(s.worker_id, step) for s, step in service_steps(services, records, {"busy"})]
    assert steps == [
        ("gone", "remove"),
        ("stopped", "remove"),
        ("sleeping", "remove"),
        ("crashed", "exited"),
    ]
    assert exit_code_of("Exited (3) 2 seconds ago") == 3
    assert exit_code_of("Up 2 seconds") is None


# --- the wrapper's side ---------------------------------------------------------------------
def test_the_wrapper_reads_the_ports_it_waits_for() -> None:
    base = {"WM_WORKER_ID": "w", "WM_REDIS_URL": "redis://x", "WM_AGENT_COMMAND": '["cat"]'}
    config = WrapperConfig.from_env({**base, "WM_SERVICE_PORTS": "5432, 6379"})
    assert config.service_ports == (5432, 6379)
    again = WrapperConfig.from_env(config.to_env())
    assert again.service_ports == (5432, 6379) and again.service_wait == config.service_wait
    assert WrapperConfig.from_env(base).service_ports == ()
    with pytest.raises(ConfigError, match="WM_SERVICE_PORTS"):
        WrapperConfig.from_env({**base, "WM_SERVICE_PORTS": "5432,0"})
