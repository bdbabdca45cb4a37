# Module GIT: the git client. ca-certificates for https remotes; openssh-client for ssh remotes.
# A base that has git already (the bootstrapped one does) needs no package index.
RUN set -eux; \
    if ! command -v git >/dev/null; then \
        apt-get update; \
        apt-get install -y --no-install-recommends ca-certificates git openssh-client; \
        rm -rf /var/lib/apt/lists/*; \
    fi; \
    git --version
