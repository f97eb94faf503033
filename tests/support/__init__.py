"""Helpers for the serializability tests (tests/test_serializable*.py).

- :mod:`support.btree_check`: checks every invariant of a stored B-tree.
- :mod:`support.layouts`: the shared containers those tests use, and where
  in them the keys a case reads and writes sit (one leaf, two leaves...).
- :mod:`support.scenarios`: the transaction bodies the worker processes run.
- :mod:`support.serial_worker`: a client process driven line by line, so a
  test decides exactly when each transaction reads, writes and commits.
- :mod:`support.workers`: the test-side handle on those processes.
- :mod:`support.txn_model`: random transactions over plain-Python models of
  the containers, for the property test.
"""
