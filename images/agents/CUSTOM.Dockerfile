# Agent: CUSTOM. Nothing to install: the worker runs the argv given in `agent_command`, which
# must exist in the image (the base image, or a module such as GIT or CURL).
