"""The package version (one place; the package face and the files it writes read it)."""

__version__ = "0.1.0"
