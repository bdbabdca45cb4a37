"""What Redis says of a worker: its record and transitions (``records``), what its heartbeat
key holds (``heartbeats``), its workspace summaries and conflicts (``summaries``), and the
evidence kept when it ends (``evidence``). Nothing here touches Docker.
May import, within ``workers``: nothing.
"""
