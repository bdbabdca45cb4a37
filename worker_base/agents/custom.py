"""The CUSTOM driver: any program, given the prompt three ways so it can take whichever suits.

* on stdin (then closed), for filters and chat-style programs;
* in ``WM_PROMPT``, for shell one-liners, unless the prompt is too big for an environment
  variable (> 64 KiB; Linux caps one at 128 KiB and argv+env together) or holds a NUL byte;
* in the file named by ``WM_PROMPT_FILE``, always, for everything else.

The wrapper adds ``WM_INPUT_ID`` for every driver. Output lines are passed through as
``stdout``/``stderr`` events (the base class behaviour).
"""

from __future__ import annotations

from worker_base.agents.base import AgentDriver, Invocation
from worker_base.config import WrapperConfig
from worker_base.identity import write_atomic

PROMPT_ENV_LIMIT = 64 * 1024


class CustomDriver(AgentDriver):
    def __init__(self, config: WrapperConfig) -> None:
        if not config.agent_command:
            raise ValueError("a CUSTOM worker needs WM_AGENT_COMMAND")
        self._argv = list(config.agent_command)
        # One file, rewritten per input (inputs run one at a time): the agent may read it,
        # only the wrapper write it.
        self._prompt_file = config.wrapper_dir / "prompt"

    def invocation(self, prompt: str) -> Invocation:
        data = prompt.encode("utf-8", "replace")
        write_atomic(self._prompt_file, data, 0o644)
        env = {"WM_PROMPT_FILE": str(self._prompt_file)}
        if len(data) <= PROMPT_ENV_LIMIT and "\x00" not in prompt:
            env["WM_PROMPT"] = prompt
        return Invocation(argv=list(self._argv), stdin=data, env=env)
