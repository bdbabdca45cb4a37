# TEST ONLY: stands in for images/agents/CLAUDE.Dockerfile when tests/fakes/images is the
# manager's images overlay (WM_IMAGES_OVERLAY). Installs the stream-json fake of tests/fakes:
# the overlay's files/ (links to ../../claude and ../../droid, followed when copied) becomes
# files/ in the build context. It needs only python3, which every worker base has already.
COPY files/claude /usr/local/bin/claude
RUN chmod 0755 /usr/local/bin/claude
