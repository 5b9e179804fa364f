"""seenn-server: a self-hosted, Seenn-compatible job progress backend."""

__version__ = "0.1.0"
