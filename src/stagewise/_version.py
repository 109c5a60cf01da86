"""The package version, apart from __init__ so that any module can import it without cycles."""

__version__ = "0.1.0"
