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

from flask_durus.errors import EmbeddedStorageError, StorageUnavailable
from flask_durus.extension import Durus

__all__ = ["Durus", "EmbeddedStorageError", "StorageUnavailable"]
