# Module GIT: the git client. ca-certificates for https remotes; openssh-client for ssh remotes.
RUN set -eux; \
    apt-get update; \
    apt-get install -y --no-install-recommends ca-certificates git openssh-client; \
    rm -rf /var/lib/apt/lists/*; \
    git --version
