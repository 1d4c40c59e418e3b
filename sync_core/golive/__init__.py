"""Go-live: the initial sync of two full databases as a planned, checkpointed job (design §6).

``plan`` reads both sides into a snapshot and decides; ``apply`` does it chunk by chunk;
``queued`` does the same chunks on the job queue (the ``initial-sync`` job kind); ``cli`` is
``python -m sync_core initial-sync``. The rules are the core's (matching, merge,
convert); the writes go through the cycle's ``Applier`` and ledger.
"""
