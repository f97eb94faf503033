"""The ``DURUS_*`` configuration keys, their defaults, and their reading.

The keys are read once, by ``init_app``, into a :class:`DurusSettings`, so
a mistake (a bad URI, a veto that does not import) fails at start-up rather
than in the first request.  Nothing is opened here.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from werkzeug.utils import import_string

from flask_durus.storage_uri import DEFAULT_FILE_NAME, StorageLocation, parse_storage_uri

CommitVeto = Callable[[Any, Any], bool]

#: Every key with its default; ``init_app`` sets these with ``setdefault``.
CONFIG_DEFAULTS: dict[str, object] = {
    "DURUS_STORAGE": None,
    "DURUS_SERVER_FILE": None,
    "DURUS_CACHE_SIZE": 100000,
    "DURUS_RETRY_ATTEMPTS": 3,
    "DURUS_RETRY_DELAY": 0.01,
    "DURUS_COMMIT_VETO": None,
    "DURUS_POOL_SIZE": 8,
    "DURUS_SOCKET_TIMEOUT": 10.0,
    "DURUS_AUTH_KEY_FILE": None,
    "DURUS_REPLAY_BODY_LIMIT": 1 << 20,
    "DURUS_RETRY_AFTER": 1,
    "DURUS_SERVER_GCBYTES": 0,
    "DURUS_RESOLUTION_ROUNDS": 10,
}


#: Flask's prefix for settings in the environment: ``app.config.from_prefixed_env()``
#: turns ``FLASK_DURUS_STORAGE`` into the key ``DURUS_STORAGE``.
ENV_PREFIX = "FLASK_"


def ignored_environment(config: Mapping[str, Any], environ: Mapping[str, str]) -> list[str]:
    """The ``FLASK_DURUS_*`` variables that ``config`` does not reflect, each
    with the reason: the app factory did not load them (no
    ``app.config.from_prefixed_env()``), config set the key to something
    else, or the name is no setting at all (a typo).
    """
    problems = []
    for name in sorted(environ):
        key = name[len(ENV_PREFIX):]
        if not name.startswith(ENV_PREFIX + "DURUS_") or "__" in key:
            continue  # "__" marks a nested key to from_prefixed_env
        if key not in CONFIG_DEFAULTS:
            problems.append(f"{name}: {key} is not a flask-durus setting")
            continue
        try:  # what from_prefixed_env makes of the value
            value = json.loads(environ[name])
        except ValueError:
            value = environ[name]
        if key not in config:
            problems.append(f"{name}: the app's config has no {key}")
        elif config[key] != value:
            problems.append(f"{name}: the app's config sets {key} = {config[key]!r}")
    return problems


def veto_error_responses(request: Any, response: Any) -> bool:
    """The default commit veto: abort when the status is 400 or above."""
    return response.status_code >= 400


@dataclass(frozen=True)
class DurusSettings:
    """One app's ``DURUS_*`` configuration, checked and resolved.

    Instance attributes (each from the key of the same name):

    - ``location``: the :class:`StorageLocation` of ``DURUS_STORAGE``.
    - ``server_file``: the file ``flask durus serve`` serves (absolute).
    - ``cache_size``: objects a connection keeps loaded between requests.
    - ``retry_attempts``: replays of a conflicted request after its first run.
    - ``retry_delay``: seconds; the first replay waits up to this long
      (chosen at random), each further one up to twice as long as the last.
    - ``commit_veto``: ``veto(request, response)``; True aborts.
    - ``pool_size``: idle connections kept per process.
    - ``socket_timeout``: seconds a storage server may take to answer.
    - ``auth_key_file``: the file with the server's shared secret, or None.
    - ``replay_body_limit``: bytes of request body buffered for replays;
      a larger body is not replayable (its conflict answers 409 at once).
    - ``retry_after``: seconds in the ``Retry-After`` header of a 503.
    - ``server_gcbytes``: ``flask durus serve`` packs after this many
      committed bytes (0: never).
    - ``resolution_rounds``: each connection's ``resolution_rounds``: how
      often a commit may merge conflicting changes before the request is
      replayed (0: no conflict resolution, as in Durus 4.3).
    """

    location: StorageLocation
    server_file: str
    cache_size: int
    retry_attempts: int
    retry_delay: float
    commit_veto: CommitVeto
    pool_size: int
    socket_timeout: float | None
    auth_key_file: str | None
    replay_body_limit: int
    retry_after: int
    server_gcbytes: int
    resolution_rounds: int

    @classmethod
    def from_config(cls, config: Mapping[str, Any], instance_path: str) -> DurusSettings:
        """Read and check the keys; ValueError naming the key if one is wrong."""
        server_file = config.get("DURUS_SERVER_FILE") or DEFAULT_FILE_NAME
        server_file = os.path.expanduser(os.fspath(server_file))
        if not os.path.isabs(server_file):
            server_file = os.path.join(instance_path, server_file)
        timeout = config.get("DURUS_SOCKET_TIMEOUT")
        key_file = config.get("DURUS_AUTH_KEY_FILE")
        return cls(
            location=parse_storage_uri(config.get("DURUS_STORAGE"), instance_path),
            server_file=os.path.normpath(server_file),
            cache_size=_number(config, "DURUS_CACHE_SIZE", int, minimum=1),
            retry_attempts=_number(config, "DURUS_RETRY_ATTEMPTS", int, minimum=0),
            retry_delay=_number(config, "DURUS_RETRY_DELAY", float, minimum=0),
            commit_veto=_commit_veto(config.get("DURUS_COMMIT_VETO")),
            pool_size=_number(config, "DURUS_POOL_SIZE", int, minimum=0),
            socket_timeout=None if timeout is None else _number(config, "DURUS_SOCKET_TIMEOUT", float, minimum=0.001),
            auth_key_file=None if key_file is None else os.path.expanduser(os.fspath(key_file)),
            replay_body_limit=_number(config, "DURUS_REPLAY_BODY_LIMIT", int, minimum=0),
            retry_after=_number(config, "DURUS_RETRY_AFTER", int, minimum=0),
            server_gcbytes=_number(config, "DURUS_SERVER_GCBYTES", int, minimum=0),
            resolution_rounds=_number(config, "DURUS_RESOLUTION_ROUNDS", int, minimum=0),
        )


def _number(config: Mapping[str, Any], key: str, kind: type, minimum: float) -> Any:
    raw = config.get(key, CONFIG_DEFAULTS[key])
    try:
        value = kind(raw)
    except (TypeError, ValueError):
        raise ValueError(f"{key} must be a number, not {raw!r}") from None
    if isinstance(raw, bool) or value < minimum:
        raise ValueError(f"{key} must be a number >= {minimum}, not {raw!r}")
    return value


def _commit_veto(veto: object) -> CommitVeto:
    if veto is None:
        return veto_error_responses
    if isinstance(veto, str):
        try:
            veto = import_string(veto)
        except ImportError as error:
            raise ValueError(
                f"DURUS_COMMIT_VETO={veto!r} does not import ({error}); give a callable "
                "or a dotted path such as 'myapp.db:veto'"
            ) from None
    if not callable(veto):
        raise ValueError(f"DURUS_COMMIT_VETO must be a callable veto(request, response), not {veto!r}")
    return veto
