"""The package version (a leaf module: the engine imports it without importing the whole package)."""

__version__ = "0.1.0"
