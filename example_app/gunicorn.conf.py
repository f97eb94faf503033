"""Gunicorn settings for the wiki in production.

Used by ``python -m example_app``, or directly, with a storage server
already running (``flask --app example_app durus serve``)::

    FLASK_DURUS_STORAGE=durus://127.0.0.1:2972 gunicorn -c example_app/gunicorn.conf.py

Every worker is its own process with its own Durus connections (a pool per
process, one connection per request), all meeting at the storage server.
Command-line options override these (``--bind``, ``--workers``).
"""

wsgi_app = "example_app:create_app()"
bind = "127.0.0.1:8000"
workers = 4
# Sync workers: one request at a time per process, the simplest model; the
# data is shared through the storage server, so more workers scale reads.
worker_class = "sync"
# A request waits at most DURUS_SOCKET_TIMEOUT on the storage server, so
# this only catches a view that hangs on something else.
timeout = 30
graceful_timeout = 10
proc_name = "durus-wiki"
errorlog = "-"
# gunicorn 23+ opens a control socket at one path per user, shared by every
# gunicorn on the machine; this deployment does not use it.
control_socket_disable = True
