# Module GITHUB_CLI: GitHub's `gh`, from Debian's own `gh` package (2.23 on bookworm), so no
# third-party apt repository or key is needed. It authenticates from GH_TOKEN at run time; git
# is installed too because most `gh` commands (pr checkout, repo clone) drive git.
RUN set -eux; \
    apt-get update; \
    apt-get install -y --no-install-recommends ca-certificates gh git; \
    rm -rf /var/lib/apt/lists/*; \
    gh --version
