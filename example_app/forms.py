"""The wiki's forms: what a user typed, checked, with errors to show back.

Checks that need the database (is this name taken?) come in as callables,
so the same forms serve the Durus app and the SQLite baseline in ``bench/``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping

from example_app.text import nfc, parse_tags, slugify, title_error

MAX_TEXT = 50_000
MIN_PASSWORD = 8
_NAME = re.compile(r"^[A-Za-z0-9_-]{3,30}$")


class Form:
    """Submitted values and the errors found in them.

    Instance attributes:

    - ``values``: field name -> the text submitted (stripped, except the
      fields in ``verbatim``), or "" when absent; templates put these back
      into the fields so nothing typed is lost.
    - ``errors``: field name -> a message saying what to change.
    """

    fields: tuple[str, ...] = ()
    # Fields kept exactly as typed: a password's spaces are part of it.
    verbatim: frozenset[str] = frozenset()

    def __init__(self, data: Mapping[str, str] | None = None) -> None:
        data = data or {}
        self.values = {
            name: value if name in self.verbatim else value.strip()
            for name, value in ((name, data.get(name) or "") for name in self.fields)
        }
        self.errors: dict[str, str] = {}

    @property
    def valid(self) -> bool:
        return not self.errors


class SignupForm(Form):
    fields = ("name", "password", "confirm")
    verbatim = frozenset({"password", "confirm"})

    def validate(self, name_taken: Callable[[str], bool]) -> bool:
        name, password = self.values["name"], self.values["password"]
        if not _NAME.match(name):
            self.errors["name"] = "Use 3 to 30 letters, digits, hyphens or underscores."
        elif name_taken(name):
            self.errors["name"] = f"The name {name!r} is taken; choose another."
        if len(password) < MIN_PASSWORD:
            self.errors["password"] = f"Use at least {MIN_PASSWORD} characters."
        elif not password.strip():
            self.errors["password"] = "Use something besides spaces."
        elif password != self.values["confirm"]:
            self.errors["confirm"] = "The two passwords differ; type the same one twice."
        return self.valid


class LoginForm(Form):
    fields = ("name", "password", "next")
    verbatim = frozenset({"password"})


class PageForm(Form):
    """A page's title, text, tags and edit summary.

    After :meth:`validate`: ``slug`` (from the title) and ``tags`` (a list).
    ``base`` is the revision number an edit started from (0 for a new page).
    """

    fields = ("title", "text", "tags", "comment", "base")

    def __init__(self, data: Mapping[str, str] | None = None) -> None:
        super().__init__(data)
        self.values["title"] = nfc(self.values["title"])
        self.values["text"] = nfc(self.values["text"])
        self.slug = ""
        self.tags: list[str] = []
        try:
            self.base = int(self.values["base"] or 0)
        except ValueError:
            self.base = 0

    def validate(self, slug_taken: Callable[[str], bool] | None = None) -> bool:
        """Check the fields; ``slug_taken`` is given for new pages only."""
        title, text = self.values["title"], self.values["text"]
        self.slug = slugify(title)
        problem = title_error(title)
        if problem:
            self.errors["title"] = problem
        elif slug_taken is not None and slug_taken(self.slug):
            self.errors["title"] = "A page with this title exists already; edit it instead."
        if not text:
            self.errors["text"] = "Write something: a page cannot be empty."
        elif len(text) > MAX_TEXT:
            self.errors["text"] = f"Keep the text under {MAX_TEXT:,} characters (it has {len(text):,})."
        self.tags, tag_error = parse_tags(self.values["tags"])
        if tag_error:
            self.errors["tags"] = tag_error
        if len(self.values["comment"]) > 200:
            self.errors["comment"] = "Keep the summary under 200 characters."
        return self.valid
