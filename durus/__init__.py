"""A persistent object database in the Durus tradition, compatible with Durus 4.3."""

__version__ = "4.3"
