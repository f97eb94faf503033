"""The extension over a storage server whose disk is full: each write
request answers 503 with ``Retry-After`` (nothing stored), reads go on,
and writes work again once space is freed.
"""

from __future__ import annotations

import os

from flask import Flask

from flask_durus import Durus
from tests.server_process import ServerProcess
from support.small_disk import small_disk  # noqa: F401  (the fixture)


def wiki_like_app(address: tuple[str, int]) -> tuple[Flask, Durus]:
    app = Flask(__name__)
    app.config.update(DURUS_STORAGE=f"durus://{address[0]}:{address[1]}", DURUS_RETRY_AFTER=7)
    durus = Durus(app)

    @app.post("/put/<int:key>")
    def put(key: int) -> str:
        durus.root[key] = os.urandom(50_000)  # incompressible
        return "stored"

    @app.post("/put-now/<int:key>")
    def put_now(key: int) -> str:
        durus.root[key] = os.urandom(50_000)  # incompressible
        durus.connection.commit()  # the view commits itself
        return "stored"

    @app.get("/count")
    def count() -> str:
        return str(len(durus.root))

    return app, durus


def test_a_full_disk_answers_503_for_writes_and_reads_go_on(small_disk) -> None:
    filler = small_disk / "filler"
    filler.write_bytes(b"f" * (1 << 20))
    with ServerProcess(small_disk / "data.durus", log_path=small_disk.parent / "server.log") as server:
        app, durus = wiki_like_app(server.address)
        client = app.test_client()
        statuses = [client.post(f"/put/{key}").status_code for key in range(40)]
        assert 200 in statuses and 503 in statuses
        stored = statuses.index(503)
        assert set(statuses[stored:]) == {503}, statuses  # none stored once full
        refused = client.post("/put/1000")
        assert refused.status_code == 503 and refused.headers["Retry-After"] == "7"
        assert b"nothing was changed" in refused.data
        assert client.post("/put-now/1001").status_code == 503
        assert client.get("/count").data == str(stored).encode()  # reads go on
        filler.unlink()
        assert client.post("/put/2000").status_code == 200
        assert client.get("/count").data == str(stored + 1).encode()
        durus.close(app)
