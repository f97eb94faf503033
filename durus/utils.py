"""Durus 4.3's names for 8- and 4-byte big-endian numbers, which its
programs import (``connection.get(int8_to_str(5))``); the project's own code
uses :mod:`durus.record`, where they are defined.
"""

from __future__ import annotations

from durus.record import int4, int8, oid_to_int, read_int4

__all__ = ["int4_to_str", "int8_to_str", "str_to_int4", "str_to_int8"]

int8_to_str = int8
str_to_int8 = oid_to_int
int4_to_str = int4
str_to_int4 = read_int4
