"""Splitting long listings into numbered pages of a fixed size."""

from __future__ import annotations

from collections.abc import Iterable
from itertools import islice
from typing import Any

PER_PAGE = 20


class Pagination:
    """One page of a listing.

    Instance attributes:

    - ``number``: this page's number, from 1.
    - ``per_page``: how many items a full page holds.
    - ``total``: how many items the whole listing holds.
    - ``items``: the items on this page.
    """

    def __init__(self, items: list[Any], total: int, number: int, per_page: int = PER_PAGE) -> None:
        self.items = items
        self.total = total
        self.number = number
        self.per_page = per_page

    @property
    def pages(self) -> int:
        return max(1, -(-self.total // self.per_page))

    @property
    def has_prev(self) -> bool:
        return self.number > 1

    @property
    def has_next(self) -> bool:
        return self.number < self.pages


def paginate(items: Iterable[Any], total: int, number: int, per_page: int = PER_PAGE) -> Pagination:
    """Page ``number`` of ``items``, an iterable of ``total`` items (read only up to that page)."""
    start = (number - 1) * per_page
    return Pagination(list(islice(items, start, start + per_page)), total, number, per_page)


def page_number(raw: str | None) -> int:
    """The page number asked for in a query string; 1 for anything odd."""
    try:
        number = int(raw or 1)
    except ValueError:
        return 1
    return max(1, min(number, 100_000))
