"""The bidirectional sync cycle (design §3): ``engine`` orders it (lease and heartbeat, feeds,
cursors), ``apply``/``newrecords`` do the record-level work, ``ledger`` keeps its books,
``accounting`` turns them into the run report, ``cli`` is ``python -m sync_core run-once``.
``operate`` is the operators' actions on failures and state (retry, dismiss, resync, reset a
cursor, export) over the same parts; ``operate_cli`` their commands.
"""
