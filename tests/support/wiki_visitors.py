"""Visitors of one wiki host, driven line by line: a script that runs where
the host is reachable (inside its network namespace, through
``ip netns exec``), and :class:`VisitorsProcess`, the test's end of it.

The script keeps one :class:`~tests.support.wiki_site.Client` (a cookie jar)
per visitor name, reads one JSON command per line on stdin and answers each
with one JSON line on stdout, so a test can interleave what happens on two
hosts request by request: an edit acknowledged on one host, then a read on
the other.  Commands (``"do"`` names the command):

- ``signup`` / ``login`` ``{"names": [...]}``: the status of each.
- ``cookies`` ``{"name"}`` / ``set_cookies`` ``{"name", "cookies"}``: a
  visitor's cookie jar, read or replaced (one browser going to either host).
- ``create`` ``{"name", "title", "text"}``: a new page's status and slug.
- ``edit`` ``{"name", "slug", "title", "text"}``: edit from the revision the
  form shows; the statuses and, when saved, the revision number.
- ``page`` ``{"slug"}``: the current revision as an anonymous visitor sees it.
- ``edits`` ``{"editors": {name: slug}, "titles": {slug: title},
  "shared": [slug], "count", "seconds", "seed"}``: every editor at once, in
  threads, ``count`` edits each (stopping early at ``seconds``), mostly of
  its own page, sometimes of a shared one; every acknowledged edit.
- ``revisions`` ``{"slug"}``: the text of every revision of a page.

    python tests/support/wiki_visitors.py PORT    # a host's wiki on 127.0.0.1:PORT
"""

from __future__ import annotations

import json
import random
import re
import subprocess
import sys
import threading
import time
import traceback
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

if __name__ == "__main__":  # run as a script: make ``tests.support`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.support.wiki_site import Client, run_clients  # noqa: E402

PASSWORD = "long password"
# Few words shared by every page, so edits on both hosts meet in the search index.
VOCABULARY = ("amber", "birch", "cedar", "dune", "ember", "fjord", "grove", "heron")
SHARED_EDIT_SHARE = 0.25  # of an editor's edits, how many go to a shared page
_SAVED = re.compile(r"Saved revision (\d+) of")
_CURRENT = re.compile(r"Revision (\d+) by")
_TEXT = re.compile(r'<div class="text"><p>(.*?)</p>', re.S)
_COUNT = re.compile(r"(\d+) revisions")


class Visitors:
    """The visitors of the wiki at ``127.0.0.1:port``, one cookie jar each."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.clients: dict[str, Client] = {}

    def client(self, name: str) -> Client:
        return self.clients.setdefault(name, Client(self.port))

    def signup(self, names: Sequence[str]) -> dict[str, Any]:
        return {"statuses": run_clients(len(names), lambda i: self.client(names[i]).signup(names[i], PASSWORD)
                                        .status)}

    def login(self, names: Sequence[str]) -> dict[str, Any]:
        def log_in(i: int) -> int:
            data = {"name": names[i], "password": PASSWORD, "next": "/"}
            return self.client(names[i]).post_form("/login", data).status
        return {"statuses": run_clients(len(names), log_in)}

    def cookies(self, name: str) -> dict[str, Any]:
        """The visitor's cookies, to hand to the same visitor on another host."""
        return {"cookies": dict(self.client(name).cookies)}

    def set_cookies(self, name: str, cookies: dict[str, str]) -> dict[str, Any]:
        self.client(name).cookies = dict(cookies)
        return {}

    def create(self, name: str, title: str, text: str) -> dict[str, Any]:
        """Create a page; the status, and the slug the wiki gave it."""
        answer = self.client(name).post_form("/new", {"title": title, "text": text, "tags": ""})
        location = urlsplit(answer.headers.get("Location", "")).path
        return {"status": answer.status, "slug": location.rsplit("/", 1)[-1] if answer.status == 302 else None}

    def edit(self, name: str, slug: str, title: str, text: str) -> dict[str, Any]:
        """Edit from the form's revision; the saved revision's number is read
        from the message the page shows next (on this same host).
        """
        client = self.client(name)
        form, answer = client.edit_current(slug, title, text)
        result: dict[str, Any] = {"form": form.status, "status": answer.status if answer else None,
                                  "revision": None, "edit_conflict": False}
        if answer is not None and answer.status == 409:
            # The page's own conflict (another revision saved since the form),
            # not the database's (its replays all met conflicts).
            result["edit_conflict"] = "while you were editing" in answer.text
        if answer is not None and answer.status == 302:
            shown = client.get(urlsplit(answer.headers["Location"]).path)
            saved = _SAVED.search(shown.text)
            result["revision"] = int(saved.group(1)) if saved else None
        return result

    def page(self, slug: str) -> dict[str, Any]:
        shown = Client(self.port).get(f"/wiki/{slug}")
        current, text = _CURRENT.search(shown.text), _TEXT.search(shown.text)
        return {"status": shown.status, "revision": int(current.group(1)) if current else None,
                "text": text.group(1) if text else None}

    def revisions(self, slug: str) -> dict[str, Any]:
        reader = Client(self.port)
        history = reader.get(f"/wiki/{slug}/history")
        count = int(_COUNT.search(history.text).group(1))
        texts = {}
        for number in range(1, count + 1):
            found = _TEXT.search(reader.get(f"/wiki/{slug}/rev/{number}").text)
            texts[number] = found.group(1) if found else None
        return {"count": count, "texts": texts}

    def edits(self, editors: dict[str, str], titles: dict[str, str], shared: Sequence[str],
              count: int, seconds: float, seed: str) -> dict[str, Any]:
        """Every editor editing at once; per editor, the statuses met and the
        edits acknowledged (slug, revision, text), and anything unexpected.
        """
        names = list(editors)
        deadline = time.monotonic() + seconds

        def editor(i: int) -> dict[str, Any]:
            name = names[i]
            chooser = random.Random(f"{seed} {name}")
            statuses: Counter = Counter()
            saved, unexpected = [], []
            for number in range(1, count + 1):
                if time.monotonic() > deadline:
                    break
                slug = chooser.choice(shared) if shared and chooser.random() < SHARED_EDIT_SHARE \
                    else editors[name]
                text = f"{name} edit {number} of {slug} " + " ".join(chooser.sample(VOCABULARY, 2))
                try:
                    result = self.edit(name, slug, titles[slug], text)
                except OSError as error:  # the edit's fate is unknown: say so
                    unexpected.append(f"{name} edit {number}: {error!r}")
                    continue
                outcome = f"{result['form']}/{result['status']}"
                statuses[outcome + (" edit conflict" if result["edit_conflict"] else "")] += 1
                if result["status"] == 302:
                    saved.append([slug, result["revision"], text])
                elif result["form"] != 200 or result["status"] != 409:
                    unexpected.append(f"{name} edit {number} of {slug}: {result}")
                elif result["edit_conflict"] and slug == editors[name]:  # no one else edits it
                    unexpected.append(f"{name} edit {number}: an edit conflict on its own page")
            return {"name": name, "statuses": dict(statuses), "saved": saved, "unexpected": unexpected}

        return {"editors": run_clients(len(names), editor, timeout=seconds + 120)}


def serve(port: int) -> None:
    """Answer commands from stdin until it closes."""
    visitors = Visitors(port)
    for line in sys.stdin:
        command = json.loads(line)
        action = command.pop("do")
        try:
            reply = getattr(visitors, action)(**command)
        except Exception:
            reply = {"error": traceback.format_exc()}
        print(json.dumps(reply), flush=True)


class VisitorsProcess:
    """The test's end of the script: one command at a time, each answer awaited."""

    def __init__(self, start: Any, port: int, label: str) -> None:
        """``start(argv, **popen_options)`` starts the script (e.g. a
        network's ``start`` for one host); ``label`` names it in errors.
        """
        self.label = label
        self.process: subprocess.Popen = start(
            [sys.executable, str(Path(__file__).resolve()), str(port)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
        self._lock = threading.Lock()

    def ask(self, timeout: float = 180.0, **command: Any) -> dict[str, Any]:
        """Send ``command`` (its ``do`` and arguments); its answer, or
        RuntimeError if it failed, the script died or ``timeout`` passed.
        """
        with self._lock:
            self.process.stdin.write(json.dumps(command) + "\n")
            self.process.stdin.flush()
            answer = _readline(self.process, timeout)
        if answer is None:
            raise RuntimeError(f"{self.label}: no answer to {command['do']} within {timeout:.0f} s "
                               f"(status {self.process.poll()})")
        reply = json.loads(answer)
        if "error" in reply:
            raise RuntimeError(f"{self.label}: {command['do']} failed:\n{reply['error']}")
        return reply

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.stdin.close()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def _readline(process: subprocess.Popen, timeout: float) -> str | None:
    """One line of ``process``'s stdout, or None at its end or after ``timeout``."""
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.append(process.stdout.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    return lines[0] if lines and lines[0] else None


if __name__ == "__main__":
    serve(int(sys.argv[1]))
