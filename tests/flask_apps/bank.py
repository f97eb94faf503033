"""A small bank for the extension's tests: a shared counter, accounts and
transfers between them, and a few views that exercise the request cycle.

Config comes from the ``config`` argument and ``FLASK_*`` environment
variables (``FLASK_DURUS_STORAGE=durus://127.0.0.1:2972``), so the same app
runs under the test client, ``flask run`` and gunicorn.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from typing import Any

from durus.btree import BTree
from durus.persistent import Persistent
from flask import Flask, Response, abort, jsonify, request, stream_with_context

from flask_durus import Durus

durus = Durus()


class Account(Persistent):
    """A named balance.  Attributes: ``name``, ``balance`` (an int)."""

    def __init__(self, name: str, balance: int) -> None:
        self.name = name
        self.balance = balance


def accounts() -> BTree:
    root = durus.root
    if "accounts" not in root:
        root["accounts"] = BTree()
    return root["accounts"]


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    app = Flask(__name__, instance_path=os.environ.get("BANK_INSTANCE_PATH"))
    app.config.update(config or {})
    app.config.from_prefixed_env()
    durus.init_app(app)

    @app.get("/ping")
    def ping() -> str:
        return "pong"

    @app.post("/counter")
    def increment() -> Any:
        root = durus.root
        root["counter"] = root.get("counter", 0) + 1
        return jsonify(counter=root["counter"], pid=os.getpid())

    @app.get("/counter")
    def counter() -> Any:
        return jsonify(counter=durus.root.get("counter", 0))

    @app.post("/accounts")
    def open_accounts() -> Any:
        table = accounts()
        for name, balance in request.get_json().items():
            table[name] = Account(name, balance)
        return jsonify(count=len(table))

    @app.post("/transfer")
    def transfer() -> Any:
        data = request.get_json()
        table = accounts()
        source, target = table[data["from"]], table[data["to"]]
        if source.balance < data["amount"]:
            abort(422)  # vetoed: nothing is committed
        source.balance -= data["amount"]
        target.balance += data["amount"]
        return jsonify(ok=True)

    @app.get("/total")
    def total() -> Any:
        table = accounts()
        return jsonify(total=sum(account.balance for account in table.values()), count=len(table))

    @app.post("/slow")
    def slow() -> Any:
        """Overlapping requests: read, wait, write."""
        root = durus.root
        seen = root.get("slow", 0)
        time.sleep(float(request.args.get("sleep", "0.2")))
        root["slow"] = seen + 1
        return jsonify(slow=root["slow"], run=request.environ["flask_durus.attempt"])

    @app.get("/stream")
    def stream() -> Response:
        durus.root["streamed"] = durus.root.get("streamed", 0) + 1

        def body() -> Any:
            yield "committed before the body\n"

        return Response(stream_with_context(body()), mimetype="text/plain")

    return app
