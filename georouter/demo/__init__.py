"""`georouter demo`: a whole CDN on loopback (origin, one edge per node, router)."""

from georouter.demo.runner import run_demo

__all__ = ["run_demo"]
