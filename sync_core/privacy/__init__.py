"""What the sync keeps, and for how long: the retention prune and the erasure of one person.

``prune.prune_state`` is the cycle's bounded prune (the store's ``prune_expired`` plus the "last
prune" record); ``forget.forget`` erases one person's rows from the sync's own state (never from
Marketo or Dynamics) and ``forget.forget_main`` is ``python -m sync_core forget``. Erasure that
follows the source (a person or record deleted there) happens where the cycle unlinks
(``cycle.ledger``). The policy itself (``core.retention.Retention``) comes from the settings
through the store. Nothing here logs a person's values: ids and counts only.
"""
