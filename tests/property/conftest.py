"""The in-process fleet fixture of the property tests."""

from tests.property.fleet import fleet

__all__ = ["fleet"]
