# Agent: OpenAI's Codex CLI (CODEX). The native, static binary (no Node.js, no npm, no network
# in the build): the manager takes it from OpenAI's pinned openai-codex-cli-bin wheel
# (WM_CODEX_CLI_VERSION) or from WM_CODEX_BINARY and puts it into the build context; its digest
# and version are part of the image hash. How it is run (its own sandbox off inside ours, the
# LLM gateway as its provider) is the wrapper's choice per run (worker_base/agents/codex.py).
COPY agent-bin/codex /usr/local/bin/codex
