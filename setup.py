"""The build of the optional C accelerator (everything else is in pyproject.toml).

``optional=True``: where no C compiler (or no Python headers) is at hand the
build goes on without it, and durus runs in pure Python (durus/speedups.py).
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("durus._speedups", ["durus/_speedups.c"], optional=True)])
