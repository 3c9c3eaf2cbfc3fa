"""The reliability suites of issue #7.

A package on purpose: as a plain directory its conftest.py would be importable as the
top-level module ``conftest`` and shadow tests/conftest.py for ``from conftest import ...``.
"""
