"""The wiki's tables, as a Flask developer would write them with Flask-SQLAlchemy.

The same data as ``example_app.models``: users, pages with every revision,
a tag index and a word index for search (tables keyed for the lookups the
pages make), and revisions indexed by time for "recent changes".
"""

from __future__ import annotations

import time

from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import Float, ForeignKey, Integer, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from werkzeug.security import check_password_hash, generate_password_hash

from example_app.markup import HTML_FORMAT, render


class Base(DeclarativeBase):
    pass


db = SQLAlchemy(model_class=Base)


class User(db.Model):
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(30))
    name_key: Mapped[str] = mapped_column(String(30), unique=True)  # lowercased, for lookups
    password_hash: Mapped[str] = mapped_column(String(200))
    created: Mapped[float] = mapped_column(Float, default=time.time)

    def __init__(self, name: str, password: str, method: str) -> None:
        super().__init__(
            name=name, name_key=name.lower(), password_hash=generate_password_hash(password, method=method)
        )

    def check_password(self, password: str) -> bool:
        return check_password_hash(self.password_hash, password)


class Revision(db.Model):
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    page_id: Mapped[int] = mapped_column(ForeignKey("page.id"), index=True)
    slug: Mapped[str] = mapped_column(String(80))
    number: Mapped[int] = mapped_column(Integer)
    title: Mapped[str] = mapped_column(String(100))
    text: Mapped[str] = mapped_column(Text)
    html: Mapped[str] = mapped_column(Text)
    tag_text: Mapped[str] = mapped_column(String(400), default="")
    comment: Mapped[str] = mapped_column(String(200), default="")
    author_id: Mapped[int] = mapped_column(ForeignKey("user.id"))
    timestamp: Mapped[float] = mapped_column(Float, index=True)
    author: Mapped[User] = relationship(lazy="joined")

    def __init__(self, **fields: object) -> None:
        super().__init__(html=render(str(fields["text"])), timestamp=time.time(), **fields)

    @property
    def tags(self) -> list[str]:
        return self.tag_text.split()

    def display_html(self) -> str:
        """The stored HTML (every row here was rendered by the current renderer)."""
        return self.html


class Page(db.Model):
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    slug: Mapped[str] = mapped_column(String(80), unique=True)
    current_id: Mapped[int | None] = mapped_column(ForeignKey("revision.id", use_alter=True))
    updated: Mapped[float] = mapped_column(Float, index=True)
    current: Mapped[Revision] = relationship(foreign_keys=[current_id], post_update=True, lazy="joined")

    @property
    def title(self) -> str:
        return self.current.title

    @property
    def tags(self) -> list[str]:
        return self.current.tags


class PageTag(db.Model):
    tag: Mapped[str] = mapped_column(String(30), primary_key=True)
    page_id: Mapped[int] = mapped_column(ForeignKey("page.id"), primary_key=True)


class PageWord(db.Model):
    word: Mapped[str] = mapped_column(String(100), primary_key=True)
    page_id: Mapped[int] = mapped_column(ForeignKey("page.id"), primary_key=True, index=True)
