"""A durable, Jitsu-compatible event router."""

from router.hookspecs import hookimpl

__all__ = ["hookimpl"]
__version__ = "0.1.0"
