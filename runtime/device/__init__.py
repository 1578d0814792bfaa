"""``dymn-listen`` as a device: the ``[device]`` room.

Sinks that keep what the listener heard (the SQLite event log, FLAC clips, MQTT with Home
Assistant discovery), per-label thresholds, the listener's device options and ``dymn-events``.
Each sink implements :class:`dymn_edge.runtime.sinks.EventSink`; the runtime core never imports
this package, only the CLI wires it in.
"""
