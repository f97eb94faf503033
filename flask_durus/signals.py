"""Signals the extension sends, for logging and metrics (blinker, as Flask).

Every signal's sender is the Flask app; connect with
``signals.transaction_committed.connect(receiver, app)`` or for all apps
without ``app``.  Receivers run in the request's thread, synchronously:
keep them quick, and don't raise.

- ``connection_checked_out``: a connection left the pool, brought up to
  date (``connection=``).
- ``transaction_committed``: a commit succeeded (``connection=``).
- ``transaction_aborted``: changes were dropped (``connection=``,
  ``reason=``: ``"vetoed"``, ``"conflict"``, ``"error"`` or
  ``"context ended"``).
- ``conflict_detected``: a request met a ConflictError (``error=``,
  ``attempt=``, the run that met it, 1 for the first; ``will_retry=``).
- ``request_retried``: a request is about to be replayed (``attempt=``,
  the run about to start, 2 for the first replay; ``delay=`` seconds slept).
"""

from __future__ import annotations

from blinker import Namespace

_signals = Namespace()

connection_checked_out = _signals.signal("durus-connection-checked-out")
transaction_committed = _signals.signal("durus-transaction-committed")
transaction_aborted = _signals.signal("durus-transaction-aborted")
conflict_detected = _signals.signal("durus-conflict-detected")
request_retried = _signals.signal("durus-request-retried")
