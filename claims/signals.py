"""Signals the pipeline sends after commit, for live updates (the console listens).

`claim_changed(sender=ClaimRecord, record_id, status)` fires after the transaction
that changed a record commits. The console connects a receiver that pushes to the
channel layer; the pipeline itself does not know about websockets.
"""

from __future__ import annotations

from django.dispatch import Signal

claim_changed = Signal()
