"""The Docker labels the service puts on what it makes (SPEC §5): one spelling for every layer.

Containers carry the worker's id, its manager and the image hash; images their hash; the
worker's volumes and the repositories' mirrors which worker (or URL) they belong to. With the
key prefix on each, several deployments share one Engine without touching each other's things.
"""

from __future__ import annotations

LABEL_WORKER = "worker-manager.worker_id"
LABEL_MANAGER = "worker-manager.manager_id"
LABEL_HASH = "worker-manager.hash"
LABEL_PREFIX = "worker-manager.key_prefix"
#: On a warm-pool container: the shape it was started for (it keeps it after it is taken).
LABEL_POOL = "worker-manager.pool"
#: On a worker's volume: which one it is (``home`` or ``workspace``).
LABEL_VOLUME = "worker-manager.volume"
#: On a repository's mirror volume: the URL it mirrors.
LABEL_MIRROR = "worker-manager.mirror"
#: On a checkout's short-lived container: the worker it checks out for.
LABEL_CHECKOUT = "worker-manager.checkout"
#: On an image build's network sidecar (``environments.build_network``): the image's hash.
LABEL_BUILD_NETWORK = "worker-manager.build-network"
#: On a service's container (SPEC §9): the worker it serves (not ``LABEL_WORKER``: it is not
#: the worker's container) and the service's name.
LABEL_SERVICE_OF = "worker-manager.service_of"
LABEL_SERVICE = "worker-manager.service"
#: On a snapshot's volume (SPEC §10): the snapshot's name.
LABEL_SNAPSHOT = "worker-manager.snapshot"
