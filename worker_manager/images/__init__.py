"""Worker images: what shapes one (``spec``), building it once per shape (``service``,
``build``), the agents' binaries, the bootstrapped base, and the collector (``gc_plan`` decides,
``gc_execute`` carries it out, ``gc_report`` shows it).

May import: ``core``, ``contract``, ``settings``, ``environments``.
"""
