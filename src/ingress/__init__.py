"""ingress: a multi-tenant host metrics agent with a compiled hot path."""

# The one place the version lives; pyproject.toml reads it from here at build
# time. A literal rather than importlib.metadata: that import drags in email,
# csv and zipfile, over a megabyte of resident memory in a long-running agent.
__version__ = "0.1.0"

__all__ = ["__version__"]
