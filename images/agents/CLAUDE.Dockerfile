# Agent: Claude Code (CLAUDE). The native, self-contained CLI binary (no Node.js, no npm, no
# network in the build): the manager takes it from the pinned claude-agent-sdk wheel
# (WM_CLAUDE_SDK_VERSION) or from WM_CLAUDE_BINARY and puts it into the build context; its
# digest and version are part of the image hash. Its environment (no auto-update, no telemetry)
# is set per run by the wrapper, so it costs no build step.
COPY agent-bin/claude /usr/local/bin/claude
