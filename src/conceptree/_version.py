"""The installed package's version (one source: ``pyproject.toml``), importable without the package's API."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("conceptree")
except PackageNotFoundError:  # pragma: no cover - running from a source tree that was never installed
    __version__ = "0+unknown"
