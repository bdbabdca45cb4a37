"""An environment's Dockerfile steps and the build network's plain parts, without Docker."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from pydantic import ValidationError

from worker_manager.contract.environments import EnvironmentSpec, parse_spec
from worker_manager.egress.grants import Grant
from worker_manager.environments.build_network import PROXY_BUILD_ARGS, grant_id, sidecar_program
from worker_manager.environments.recipe import (
    CA_PORT,
    RECIPE_VERSION,
    VENV,
    failure_lines,
    needs_network,
    render_steps,
)
from worker_manager.images.build import LogLines
from worker_manager.settings import Settings
from worker_manager.settings.environments import DEFAULT_BUILD_EGRESS


def steps(text: str) -> list[str]:
    """The Dockerfile instructions of a rendering (comments left out)."""
    return [line.split()[0] for line in text.splitlines() if line[:1].isupper()]


def test_no_environment_and_env_only_need_no_network() -> None:
    assert render_steps(None) == "# (no environment)"
    assert not needs_network(None)
    only_env = parse_spec({"env": {"A": "1"}})
    assert not needs_network(only_env)
    assert steps(render_steps(only_env)) == ["ENV"]


@pytest.mark.parametrize(
    "spec", [{"apt": ["jq"]}, {"pip": ["six"]}, {"run": ["true"]}, {"apt": ["jq"], "pip": ["six"]}]
)
def test_at_most_two_steps_whatever_the_spec_holds(spec: dict[str, list[str]]) -> None:
    parsed = parse_spec({**spec, "env": {"A": "1"}, "run": ["echo a", "echo b"]})
    assert needs_network(parsed)
    assert steps(render_steps(parsed)) == ["ENV", "RUN"]


def test_text_depends_on_the_spec_alone() -> None:
    """Two managers with other CAs or proxies render (and hash) the same text."""
    one = parse_spec({"apt": ["jq", "curl"], "pip": ["six"]})
    other = parse_spec({"pip": ["six"], "apt": ["curl", "jq"]})
    assert render_steps(one) == render_steps(other)
    text = render_steps(one)
    assert f"# environment recipe {RECIPE_VERSION}" in text
    assert "3128" not in text and "/usr/local/share/ca-certificates" not in text
    assert f", {CA_PORT}), 30)" in text  # the CAs: from the sidecar, not a COPY
    assert "COPY" not in text


def test_pip_goes_into_a_venv_first_on_path_never_the_system() -> None:
    text = render_steps(parse_spec({"pip": ["six", 'tomli>=2; python_version < "3.12"']}))
    assert f'PATH="{VENV}/bin:$PATH"' in text
    assert f"python3 -I -m venv {VENV}" in text
    assert f"{VENV}/bin/python -I -m pip install" in text
    assert "--break-system-packages" not in text
    assert "'tomli>=2; python_version < \"3.12\"'" in text  # quoted for the shell


def test_no_pip_leaves_path_alone() -> None:
    assert "PATH=" not in render_steps(parse_spec({"apt": ["jq"], "env": {"A": "b"}}))


def test_env_values_are_literal() -> None:
    text = render_steps(parse_spec({"env": {"A": 'x $HOME "q" \\'}}))
    assert 'ENV A="x \\$HOME \\"q\\" \\\\"' in text


def test_run_lines_are_quoted_numbered_and_in_order() -> None:
    text = render_steps(parse_spec({"run": ["echo 'a' && false", "echo $HOME; exit 3"]}))
    first = text.index("sh -c 'echo '\"'\"'a'\"'\"' && false'")
    second = text.index("sh -c 'echo $HOME; exit 3'")
    assert first < second
    assert "wm-env: run line 1 exited with" in text and "wm-env: run line 2 exited" in text
    for line in text.splitlines()[2:]:
        assert not line.lstrip().startswith("#")  # a comment line would end the RUN step


def test_scratch_is_removed_and_cas_are_trusted_only_in_the_step() -> None:
    text = render_steps(parse_spec({"apt": ["jq"]}))
    assert text.rstrip().endswith("rm -rf /tmp/wm-build")
    assert "Acquire::https::CAInfo=/tmp/wm-build/ca.pem" in text
    assert "update-ca-certificates" not in text


def test_failure_lines_are_the_package_managers_own() -> None:
    log = [
        "Reading package lists...",
        "E: Unable to locate package nosuchpkg-wm",
        "E: Unable to locate package nosuchpkg-wm",
        "ERROR: Could not find a version that satisfies the requirement nosuch (from versions:)",
        "ERROR: No matching distribution found for nosuch",
        "wm-env: run line 2 exited with 3",
        "W: some warning",
    ]
    said = failure_lines(log)
    assert said.split("; ") == [
        "E: Unable to locate package nosuchpkg-wm",
        "ERROR: Could not find a version that satisfies the requirement nosuch (from versions:)",
        "ERROR: No matching distribution found for nosuch",
        "wm-env: run line 2 exited with 3",
    ]
    assert failure_lines(["Step 1/3 : FROM x", "The command returned 1"]) == ""
    assert len(failure_lines([f"E: {i} " + "x" * 100 for i in range(50)])) <= 600


def test_sidecar_program_is_the_wrappers_relay_and_compiles() -> None:
    program = sidecar_program()
    ast.parse(program)
    assert "class LoopbackRelays" in program
    assert f"{CA_PORT}" in program and "/run/wm/proxy.sock" in program


def test_proxy_arguments_are_dockers_predefined_ones() -> None:
    """Only Docker's predefined proxy arguments stay out of the image's history."""
    predefined = {"HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "NO_PROXY", "no_proxy"}
    assert set(PROXY_BUILD_ARGS) <= predefined
    assert grant_id("ab" * 32) == "build-abababababab"


def test_build_settings_are_checked_at_start(tmp_path: Path) -> None:
    defaults = Settings(_env_file=None)  # type: ignore[call-arg]
    assert defaults.build_egress == list(DEFAULT_BUILD_EGRESS)
    assert defaults.build_ca_files == []
    with pytest.raises(ValidationError, match="not a destination"):
        Settings(_env_file=None, build_egress=["https://pypi.org"])  # type: ignore[call-arg]
    with pytest.raises(ValidationError, match="WM_BUILD_CA_FILES"):
        Settings(_env_file=None, build_ca_files=[tmp_path / "missing.pem"])  # type: ignore[call-arg]
    not_pem = tmp_path / "x.pem"
    not_pem.write_text("hello")
    with pytest.raises(ValidationError, match="no PEM certificate"):
        Settings(_env_file=None, build_ca_files=[not_pem])  # type: ignore[call-arg]


def test_spec_model_is_what_the_recipe_reads() -> None:
    spec = EnvironmentSpec(apt=("jq",))
    assert needs_network(spec) and "wm_apt=jq;" in render_steps(spec)


def test_a_build_grant_reports_nothing_and_old_grants_still_do() -> None:
    """A build has no output stream: its grant says so, and the service writes nothing."""
    grant = Grant(worker_id="build-abababababab", key_prefix="w", egress=("pypi.org:443",))
    quiet = Grant.from_json(
        Grant(worker_id=grant.worker_id, key_prefix="w", report=False).to_json()
    )
    assert quiet.report is False
    assert Grant.from_json(grant.to_json()).report is True
    assert Grant.from_json('{"worker_id": "w1", "key_prefix": "w"}').report is True


def test_a_message_split_across_stream_chunks_is_read_whole() -> None:
    """The Engine's build stream is not cut at line ends: apt's ``E: `` and the rest of its
    message can arrive in two chunks (seen in a CI run), and the reason must name the package."""
    lines = LogLines()
    read = [*lines.feed("Building dependency tree...\nE: "), *lines.feed("Unable to locate ")]
    read += lines.feed("package nosuchpkg-wm\nReading")
    read += lines.flush()
    assert read == [
        "Building dependency tree...",
        "E: Unable to locate package nosuchpkg-wm",
        "Reading",
    ]
    assert failure_lines(read) == "E: Unable to locate package nosuchpkg-wm"
    assert lines.flush() == [] and lines.feed("") == []
