"""Fixtures of the lab tests: the annotation fixtures they share (row counts of a ranking write)."""
from annotation.tests.conftest import db_counts, on_postgresql  # noqa: F401  (pytest fixtures, by name)
