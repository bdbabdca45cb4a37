"""A create's ``env`` (SPEC §1): variables for the agent, and the names no create may set.

The values reach the agent's processes only: the manager hands them to the wrapper as data
(``WM_AGENT_ENV``, :class:`worker_base.config.WrapperConfig`) and the wrapper adds them to each
agent run's environment, never to its own. Still, every process the agent starts inherits them,
among them the ones that hold the worker to its limits (the allowed-commands shims, git run for
the workspace's answers, the proxy's clients that trust the containment's CA), so ``env`` is data
for the agent's programs and never a way to change which code runs, which configuration is
read, or whom TLS trusts. A name is refused when it is:

* **the deployment's**: ``WM_*`` (the wrapper's), ``ANTHROPIC_*`` and ``OPENAI_*`` (the LLM
  gateway's, SPEC §7), the proxy variables (any ``*_PROXY``), ``PATH`` and ``HOME``;
* **the dynamic loader's or the C library's**: ``LD_*``, ``DYLD_*``, ``GLIBC_TUNABLES``,
  ``GCONV_PATH``, ``LOCPATH``, ``NLSPATH`` (each makes a program load code or data from a path
  it did not choose);
* **an interpreter's startup hook or module path**: ``PYTHON*``, ``PERL*``, ``RUBY*``,
  ``GEM_*``, ``NODE_*``, ``JAVA_TOOL_OPTIONS``, ``_JAVA_OPTIONS``, ``JDK_JAVA_OPTIONS``,
  ``CLASSPATH``, ``LUA_*``, ``TCLLIBPATH``, ``PHPRC``, ``PHP_INI_SCAN_DIR``;
* **a shell's startup**: ``BASH_*`` (``BASH_ENV``, ``BASH_LOADABLES_PATH``…), ``ENV``,
  ``SHELLOPTS``, ``BASHOPTS``, ``PS4``, ``PROMPT_COMMAND``, ``IFS``, ``ZDOTDIR``;
* **git's configuration or a program git runs**: ``GIT_*`` (``GIT_CONFIG_*``,
  ``GIT_SSH_COMMAND``, ``GIT_PROXY_COMMAND``, ``GIT_ASKPASS``, ``GIT_EXEC_PATH``…), except the
  author's and committer's identity (``GIT_AUTHOR_*``, ``GIT_COMMITTER_*``: name, email, date);
* **TLS trust**: ``SSL_*`` (``SSL_CERT_FILE``, ``SSL_CERT_DIR``), ``OPENSSL_*``,
  ``REQUESTS_CA_BUNDLE``, ``CURL_CA_BUNDLE``, ``SSLKEYLOGFILE`` (the containment's CA bundle is
  the deployment's; ``OPENSSL_CONF`` also loads engines).

Names are ``[A-Z_][A-Z0-9_]*``, at most 64 pairs, values at most 4 KiB without NUL; each refusal
names the variable and says why. Never meant for secrets: those are the operator's (SPEC §7).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

ENV_NAME = re.compile(r"^[A-Z_][A-Z0-9_]*$")
MAX_ENV_PAIRS = 64
MAX_ENV_VALUE_CHARS = 4096


@dataclass(frozen=True, slots=True)
class Reserved:
    """One reason a name is refused, and the names it covers."""

    reason: str
    names: frozenset[str] = frozenset()
    prefixes: tuple[str, ...] = ()
    suffixes: tuple[str, ...] = ()
    #: Names the prefixes would cover that stay allowed.
    allowed: frozenset[str] = frozenset()

    def covers(self, name: str) -> bool:
        if name in self.allowed:
            return False
        return name in self.names or name.startswith(self.prefixes) or name.endswith(self.suffixes)


#: Git's identity variables: data (who wrote a commit), not configuration.
GIT_IDENTITY = frozenset(
    f"GIT_{who}_{what}" for who in ("AUTHOR", "COMMITTER") for what in ("NAME", "EMAIL", "DATE")
)

RESERVED: tuple[Reserved, ...] = (
    Reserved(
        "the deployment's to set, not a create's",
        names=frozenset({"PATH", "HOME"}),
        prefixes=("WM_", "ANTHROPIC_", "OPENAI_"),
        suffixes=("_PROXY",),
    ),
    Reserved(
        "it makes the dynamic loader or the C library load code or data",
        names=frozenset({"GLIBC_TUNABLES", "GCONV_PATH", "LOCPATH", "NLSPATH"}),
        prefixes=("LD_", "DYLD_"),
    ),
    Reserved(
        "it is an interpreter's startup hook or module path",
        names=frozenset(
            {
                "JAVA_TOOL_OPTIONS",
                "_JAVA_OPTIONS",
                "JDK_JAVA_OPTIONS",
                "CLASSPATH",
                "TCLLIBPATH",
                "PHPRC",
                "PHP_INI_SCAN_DIR",
            }
        ),
        prefixes=("PYTHON", "PERL", "RUBY", "GEM_", "NODE_", "LUA_"),
    ),
    Reserved(
        "it runs code when a shell starts",
        names=frozenset(
            {"ENV", "SHELLOPTS", "BASHOPTS", "PS4", "PROMPT_COMMAND", "IFS", "ZDOTDIR"}
        ),
        prefixes=("BASH_",),
    ),
    Reserved(
        "it is git's configuration or a program git runs (only GIT_AUTHOR_* and "
        "GIT_COMMITTER_* may be set)",
        prefixes=("GIT_",),
        allowed=GIT_IDENTITY,
    ),
    Reserved(
        "it changes whom TLS trusts: the worker's roots are the deployment's",
        names=frozenset({"REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "SSLKEYLOGFILE"}),
        prefixes=("SSL_", "OPENSSL_"),
    ),
)


def refusal(name: str) -> str | None:
    """Why a create may not set ``name`` (a sentence), or None when it may."""
    for reserved in RESERVED:
        if reserved.covers(name):
            return reserved.reason
    return None


def check_env(value: Mapping[str, Any]) -> dict[str, str]:
    """A create's ``env``, checked; ValueError naming the first variable refused and why."""
    if len(value) > MAX_ENV_PAIRS:
        raise ValueError(f"has {len(value)} variables; at most {MAX_ENV_PAIRS}")
    checked: dict[str, str] = {}
    for name, item in value.items():
        if not isinstance(name, str) or not ENV_NAME.match(name):
            raise ValueError(f"variable {str(name)[:40]!r}: a name is [A-Z_][A-Z0-9_]*")
        reason = refusal(name)
        if reason is not None:
            raise ValueError(f"variable {name!r} is refused: {reason}")
        if not isinstance(item, str):
            raise ValueError(f"variable {name!r}: a value is a string")
        if len(item) > MAX_ENV_VALUE_CHARS or "\x00" in item:
            raise ValueError(
                f"variable {name!r}: a value is at most {MAX_ENV_VALUE_CHARS} characters, no NUL"
            )
        checked[name] = item
    return checked
