"""nclens: measure, explain and exploit neural collapse."""

__version__ = "0.1.0"
