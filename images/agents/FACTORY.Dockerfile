# Agent: Factory Droid (FACTORY), from a `droid` binary the operator provides on the manager's
# host (WM_FACTORY_BINARY); the manager puts it into the build context and its digest is part of
# the image hash. Without it, WM_FACTORY_NPM_VERSION selects FACTORY-npm.Dockerfile instead.
COPY agent-bin/droid /usr/local/bin/droid
