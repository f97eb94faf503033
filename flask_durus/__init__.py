"""flask_durus: a Flask app that keeps its data in Durus, one transaction per
request, with conflicts replayed and gunicorn workers made safe.

    from flask import Flask
    from flask_durus import Durus

    durus = Durus()

    def create_app():
        app = Flask(__name__)
        durus.init_app(app)
        return app
"""

from __future__ import annotations

from durus import distribution_version
from flask_durus.errors import EmbeddedStorageError, StorageUnavailable
from flask_durus.extension import Durus
from flask_durus.signals import (
    conflict_detected,
    connection_checked_out,
    request_retried,
    transaction_aborted,
    transaction_committed,
)

__version__ = distribution_version()

__all__ = [
    "Durus",
    "EmbeddedStorageError",
    "StorageUnavailable",
    "conflict_detected",
    "connection_checked_out",
    "request_retried",
    "transaction_aborted",
    "transaction_committed",
    "__version__",
]
