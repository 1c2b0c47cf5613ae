"""ingress: a multi-tenant host metrics agent with a compiled hot path."""
from importlib.metadata import PackageNotFoundError, version as _version

try:
    __version__ = _version("ingress-agent")
except PackageNotFoundError:  # running from a source tree without an install
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
