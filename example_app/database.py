"""The Durus extension instance and the way views reach the wiki's data."""

from __future__ import annotations

from flask import current_app

from example_app.models import Wiki, get_wiki
from flask_durus import Durus

durus = Durus()


def current_wiki() -> Wiki:
    """The Wiki of the current request's connection (made on first use)."""
    return get_wiki(current_app.extensions["durus"].root)
