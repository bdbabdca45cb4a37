"""The operator's console: ``GET /ui`` on ``WM_HTTP_ADDR``, enabled by ``WM_UI_TOKEN`` (SPEC §6).

Server-rendered HTML and a few lines of JavaScript (no build, no CDN: it works offline). It reads
Redis like any client and acts like any producer: Send and Cancel are input entries, Delete is a
command on the command stream; it never calls Docker. Everything a worker or a producer wrote is
escaped before it reaches the page. ``service`` mounts it.

Owns: the routes (``app``), who may see them (``session``, and ``throttle`` for failed
sign-ins), the HTML (``views``).

May import: ``core``, ``contract``, ``settings``, ``client``.
"""
