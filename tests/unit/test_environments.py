"""Environments (SPEC §9) without Docker or Redis: a spec's validation, its canonical form and
digest, the catalogue's resolution, shapes with ``@environment``, the saved create and its plan,
and the image's hash and Dockerfile."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from tests.support.offline import offline_settings
from worker_manager.contract.commands import CreateCommand, parse_command
from worker_manager.contract.create_spec import load_spec, spec_of
from worker_manager.contract.environments import (
    MAX_APT,
    MAX_RUN,
    MAX_RUN_CHARS,
    EnvironmentSpec,
    ResolvedEnvironment,
    parse_environment,
    parse_spec,
)
from worker_manager.contract.kinds import AgentType, Shape
from worker_manager.contract.record import WorkerRecord
from worker_manager.core.errors import ErrorCode, InvalidCommand
from worker_manager.environments.catalogue import listing, resolve
from worker_manager.environments.recipe import render_steps
from worker_manager.images.spec import ImageSpec, Templates, packaged_images_dir
from worker_manager.settings import Settings
from worker_manager.workers.transitions.create_plan import plan_create

BASE = "worker-manager/base:bookworm"


settings = offline_settings


def create(s: Settings, environment: str) -> CreateCommand:
    entry = {
        "command": "create",
        "agent_type": "CUSTOM",
        "agent_command": '["cat"]',
        "environment": environment,
    }
    command = parse_command(entry, "1-0", s, replies=s.keys.replies)
    assert isinstance(command, CreateCommand)
    return command


# --- validation ---------------------------------------------------------------------------------
GOOD = {
    "base": "debian:bookworm-slim",
    "apt": ["jq", "postgresql-client=15.8-0+deb12u1", "libssl3=1:3.0.15-1~deb12u1", "g++"],
    "pip": ["requests[socks]>=2.31,<3", "pytest==8.3.3", 'tomli; python_version < "3.11"'],
    "run": ["echo built > /etc/wm-env-marker", "npm install -g pnpm@9\tquiet"],
    "env": {"APP_MODE": "test", "GIT_AUTHOR_NAME": 'a $b "c" \\d'},
}


def test_a_good_spec_is_accepted_whole() -> None:
    spec = parse_spec(GOOD)
    assert spec.base == "debian:bookworm-slim"
    assert "g++" in spec.apt and "pytest==8.3.3" in spec.pip
    assert spec.run == tuple(GOOD["run"])
    assert spec.env["GIT_AUTHOR_NAME"] == 'a $b "c" \\d'


@pytest.mark.parametrize(
    ("spec", "part", "words"),
    [
        ({"apt": ["Jq"]}, "apt", "not a Debian package name"),
        ({"apt": ["-o=APT::x"]}, "apt", "not a Debian package name"),
        ({"apt": ["./local.deb"]}, "apt", "not a Debian package name"),
        ({"apt": ["jq/bookworm-backports"]}, "apt", "not a Debian package name"),
        ({"apt": ["jq=latest"]}, "apt", "not a Debian version"),
        ({"apt": ["jq=1.6-"]}, "apt", "not a Debian version"),
        ({"apt": "jq"}, "apt", "a list"),
        ({"apt": ["a" + str(i) for i in range(MAX_APT + 1)]}, "apt", f"at most {MAX_APT}"),
        ({"pip": ["x @ https://evil.example/x.whl"]}, "pip", "names a URL"),
        ({"pip": ["--index-url=https://evil.example"]}, "pip", "is an option"),
        ({"pip": ["-e ."]}, "pip", "is an option"),
        ({"pip": ["./pkg"]}, "pip", "not a requirement specifier"),
        ({"pip": ["/tmp/x.whl"]}, "pip", "not a requirement specifier"),
        ({"pip": ["https://evil.example/x.whl"]}, "pip", "not a requirement specifier"),
        ({"run": ["echo a\necho b"]}, "run", "newline or control character"),
        ({"run": ["  "]}, "run", "empty"),
        ({"run": ["x" * (MAX_RUN_CHARS + 1)]}, "run", f"at most {MAX_RUN_CHARS}"),
        ({"run": ["true"] * (MAX_RUN + 1)}, "run", f"at most {MAX_RUN}"),
        ({"env": {"LD_PRELOAD": "/x.so"}}, "env", "dynamic loader"),
        ({"env": {"PATH": "/evil"}}, "env", "deployment's"),
        ({"env": {"lower": "x"}}, "env", "a name is"),
        ({"env": {"A": "one\ntwo"}}, "env", "control character"),
        ({"env": ["A=1"]}, "env", "an object"),
        ({"base": "evil image; rm -rf /"}, "base", "not an image name"),
        ({"base": "UPPER/case"}, "base", "not an image name"),
        ({"packages": ["jq"]}, "packages", "not part of a spec"),
    ],
)
def test_a_bad_spec_is_refused_naming_its_part(spec: dict[str, Any], part: str, words: str) -> None:
    with pytest.raises(ValueError, match="^" + part) as caught:
        parse_spec(spec)
    assert words in str(caught.value)


def test_a_spec_too_big_as_a_whole_is_refused() -> None:
    big = {"run": ["echo " + "x" * 4000] * 20}  # each line allowed, the whole too big
    with pytest.raises(ValueError, match="canonical JSON; at most"):
        parse_spec(big)


def test_the_command_names_the_environment_field() -> None:
    s = settings()
    for bad in ('{"apt": ["Jq"]}', "not a name!", '{"apt": [', '{"apt": ["jq"], "x": 1}'):
        with pytest.raises(InvalidCommand) as caught:
            create(s, bad)
        assert caught.value.field == "environment"
        assert caught.value.message.startswith("field 'environment'")


# --- canonical form and digest ------------------------------------------------------------------
def test_canonical_form_sorts_and_dedupes_packages_and_keeps_run_order() -> None:
    one = parse_spec(
        {"apt": ["jq", "curl", "jq"], "pip": ["PyTest==8.3.3", "requests"], "run": ["b", "a"]}
    )
    two = parse_spec(
        {"apt": ["curl", "jq"], "pip": ["requests", "pytest==8.3.3"], "run": ["b", "a"]}
    )
    assert one == two and one.digest == two.digest
    assert one.canonical()["apt"] == ["curl", "jq"]
    assert one.canonical()["pip"] == ["pytest==8.3.3", "requests"]
    reordered = parse_spec({"apt": ["curl", "jq"], "pip": ["requests"], "run": ["a", "b"]})
    assert reordered.digest != parse_spec({**reordered.canonical(), "run": ["b", "a"]}).digest
    assert one.digest.startswith("sha256:") and len(one.digest) == 7 + 64
    assert json.loads(one.canonical_json()) == one.canonical()


def test_parse_environment_tells_a_name_from_a_spec() -> None:
    assert parse_environment("node20") == "node20"
    assert parse_environment("") is None and parse_environment(None) is None
    spec = parse_environment('{"apt": ["jq"]}')
    assert isinstance(spec, EnvironmentSpec) and spec.apt == ("jq",)
    assert parse_environment({"apt": ["jq"]}) == spec


# --- the catalogue ------------------------------------------------------------------------------
CATALOGUE = json.dumps(
    {
        "node20": {"apt": ["nodejs"], "env": {"APP_MODE": "test"}},
        "slim": {"base": "python:3.12-slim", "pip": ["pytest"]},
    }
)


def test_a_catalogue_name_resolves_to_its_spec_with_the_base_filled_in() -> None:
    s = settings(environments=CATALOGUE, base_images=["python:3.12-slim"])
    node = resolve("node20", s)
    assert node is not None and node.label == "node20" and node.name == "node20"
    assert node.spec.base == s.base_image and node.spec.apt == ("nodejs",)
    slim = resolve("slim", s)
    assert slim is not None and slim.spec.base == "python:3.12-slim"


def test_an_ad_hoc_spec_is_labelled_by_the_digest_of_its_resolved_form() -> None:
    s = settings()
    resolved = resolve(parse_spec({"apt": ["jq"]}), s)
    same = resolve(parse_spec({"apt": ["jq"], "base": s.base_image}), s)
    assert resolved is not None and same is not None
    assert resolved.label == same.label == resolved.spec.digest
    assert resolved.name is None
    assert resolve(resolved, s) is resolved  # resolving twice changes nothing


@pytest.mark.parametrize(
    ("requested", "more", "words"),
    [
        ("missing", {"base_images": ["python:3.12-slim"]}, "not in this deployment's catalogue"),
        (
            '{"apt": ["jq"]}',
            {"environments_adhoc": "off", "base_images": ["python:3.12-slim"]},
            "WM_ENVIRONMENTS_ADHOC=off",
        ),
        (
            '{"base": "debian:bookworm"}',
            {"base_images": ["python:3.12-slim"]},
            "base 'debian:bookworm' is not allowed",
        ),
    ],
)
def test_refusals_are_invalid_commands_naming_the_environment(
    requested: str, more: dict[str, Any], words: str
) -> None:
    s = settings(environments=CATALOGUE, **more)
    with pytest.raises(InvalidCommand) as caught:
        resolve(create(s, requested).environment, s)
    assert caught.value.code is ErrorCode.INVALID_COMMAND
    assert caught.value.field == "environment"
    assert words in caught.value.message


def test_catalogue_names_work_with_ad_hoc_off_and_allowed_bases() -> None:
    s = settings(environments=CATALOGUE, environments_adhoc="off", base_images=["python:3.12-slim"])
    assert resolve("node20", s) is not None
    assert resolve(parse_spec({"base": "debian:12"}), settings(base_images=["debian:12"]))


def test_the_catalogue_is_checked_at_start(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="environment 'bad': apt"):
        settings(environments='{"bad": {"apt": ["Nope"]}}')
    with pytest.raises(ValidationError, match="is not a name"):
        settings(environments='{"no spaces": {}}')
    with pytest.raises(ValidationError, match=r"base 'python:3\.12-slim' is not"):
        settings(environments=CATALOGUE)  # slim's base is not allowed
    with pytest.raises(ValidationError, match="names environment 'ghost'"):
        settings(prebuild=["CUSTOM@ghost"])
    with pytest.raises(ValidationError, match="names environment 'ghost'"):
        settings(warm_pool={"CUSTOM@ghost": 1})
    catalogue = tmp_path / "environments.json"
    catalogue.write_text(CATALOGUE)
    s = settings(
        environments=str(catalogue),
        base_images=["python:3.12-slim"],
        prebuild=["CLAUDE+GIT@node20"],
        warm_pool={"custom@slim": 2},
    )
    assert sorted(s.environments) == ["node20", "slim"]
    assert s.prebuild == ["CLAUDE+GIT@node20"] and s.warm_pool == {"CUSTOM@slim": 2}


# --- shapes -------------------------------------------------------------------------------------
def test_a_shape_may_name_an_environment() -> None:
    shape = Shape.parse("claude+git@node20")
    assert shape == Shape(AgentType.CLAUDE, (Shape.parse("CLAUDE+GIT").modules), "node20")
    assert str(shape) == "CLAUDE+GIT@node20"
    assert Shape.parse("CUSTOM").environment is None
    assert str(Shape.parse("CUSTOM@Node.20_x-1")) == "CUSTOM@Node.20_x-1"  # case kept
    with pytest.raises(ValueError, match="not an environment name"):
        Shape.parse("CLAUDE@")
    with pytest.raises(ValueError, match="not an environment name"):
        Shape.parse("CLAUDE@a b")
    with pytest.raises(ValueError, match="'NOPE' is not one of"):
        Shape.parse("CLAUDE+NOPE@node20")


# --- the saved create and its plan --------------------------------------------------------------
def test_the_resolved_environment_is_saved_and_planned() -> None:
    s = settings(environments=CATALOGUE, base_images=["python:3.12-slim"])
    command = create(s, "node20")
    resolved = resolve(command.environment, s)
    saved = json.loads(json.dumps(spec_of(command, [], resolved)))  # as Redis keeps it
    assert saved["environment"]["label"] == "node20"
    loaded = load_spec(saved)
    assert isinstance(loaded.environment, ResolvedEnvironment)
    assert loaded.environment == resolved
    record = WorkerRecord.from_hash("w", {"status": "STARTING"})
    assert record is not None
    plan = plan_create(loaded, s, record)
    assert plan.environment == resolved
    assert str(plan.shape) == "CUSTOM@node20"
    # The catalogue changed since: the saved create keeps the spec it was accepted with.
    changed = settings(environments='{"node20": {"apt": ["nodejs", "npm"]}}')
    assert plan_create(loaded, changed, record).environment == resolved


def test_a_create_without_environment_saves_none() -> None:
    s = settings()
    command = create(s, "")
    saved = spec_of(command, [])
    assert saved["environment"] is None and load_spec(saved).environment is None


# --- the image ----------------------------------------------------------------------------------
def image(environment: EnvironmentSpec | None) -> ImageSpec:
    return ImageSpec(
        base_image=environment.base if environment and environment.base else BASE,
        base_image_id="sha256:base",
        agent_type=AgentType.CUSTOM,
        modules=(),
        templates=Templates(packaged_images_dir()),
        environment=environment,
    )


def test_the_environment_is_part_of_the_image_hash() -> None:
    plain = image(None)
    one = image(parse_spec({"env": {"A": "1"}, "base": BASE}))
    same = image(parse_spec({"base": BASE, "env": {"A": "1"}}))
    other = image(parse_spec({"env": {"A": "2"}, "base": BASE}))
    assert plain.canonical()["environment"] is None
    assert one.canonical()["environment"] == one.environment.canonical()  # type: ignore[union-attr]
    assert one.hash == same.hash
    assert len({plain.hash, one.hash, other.hash}) == 3


def test_the_dockerfile_has_the_environment_after_the_agent_and_before_the_wrapper() -> None:
    spec = parse_spec({"env": {"B": 'a $HOME "q" \\x', "A": "1"}})
    steps = render_steps(spec)
    assert 'B="a \\$HOME \\"q\\" \\\\x"' in steps  # baked literally: no substitution
    dockerfile = image(spec.with_base(BASE)).dockerfile()
    assert steps in dockerfile
    assert dockerfile.index("# agent CUSTOM") < dockerfile.index("ENV A=")
    assert dockerfile.index("ENV A=") < dockerfile.index("COPY worker-base/")
    assert "# (no environment)" in image(None).dockerfile()


def test_listing_matches_images_to_catalogue_entries() -> None:
    s = settings(environments=CATALOGUE, base_images=["python:3.12-slim"])
    node = resolve("node20", s)
    assert node is not None
    built = image(node.spec)
    images = {
        built.hash: (built.canonical_json(), 1_700_000_000.0),
        image(None).hash: (image(None).canonical_json(), 1_700_000_100.0),
        "broken": ("not json", None),
    }
    entries = {entry.name: entry for entry in listing(s, images)}
    assert [i.tag for i in entries["node20"].images] == [built.tag]
    assert entries["node20"].images[0].shape == "CUSTOM"
    assert entries["node20"].base == s.base_image
    assert entries["slim"].images == () and entries["slim"].base == "python:3.12-slim"


@pytest.mark.parametrize(
    "name",
    [
        "worker-manager/base:bookworm",
        "debian:bookworm-slim",
        "python:3.12-slim",
        "registry.example:5000/team/node:20",
        "localhost:5000/node",
        "ghcr.io/org/img@sha256:" + "a" * 64,
    ],
)
def test_image_names_as_docker_reads_them_are_bases(name: str) -> None:
    assert parse_spec({"base": name}).base == name


# --- what people see ----------------------------------------------------------------------------
def test_the_console_and_the_cli_show_a_workers_environment() -> None:
    from worker_manager.cli.views import agent_of
    from worker_manager.client.models import WorkerInfo
    from worker_manager.console import views

    digest = "sha256:" + "ab" * 32
    named = WorkerRecord.from_hash(
        "w1", {"status": "RUNNING", "agent_type": "CLAUDE", "environment": "node<20>"}
    )
    adhoc = WorkerRecord.from_hash("w2", {"status": "RUNNING", "environment": digest})
    assert named is not None and adhoc is not None
    row = views.rows([named, adhoc], 0.0)
    assert "<td>node&lt;20&gt;</td>" in row  # escaped: a record's text is never markup
    assert f"<td>{digest[:19]}…</td>" in row
    page = views.worker_page(named, [], [], {}, csrf="c")
    assert '<b id="environment">node&lt;20&gt;</b>' in page
    info = WorkerInfo.from_fields({"worker_id": "w", "agent_type": "CLAUDE", "environment": digest})
    assert info.environment == digest
    assert agent_of(info) == "CLAUDE@" + digest[:19]
    assert agent_of(WorkerInfo.from_fields({"agent_type": "CUSTOM"})) == "CUSTOM"


def test_a_spec_hashes_by_its_canonical_form() -> None:
    assert hash(parse_spec({"env": {"A": "1"}})) == hash(parse_spec({"env": {"A": "1"}}))
