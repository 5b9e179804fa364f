"""Docker HEALTHCHECK: exit 0 when this container's server answers GET /readyz with 200.

Standard library only (the slim image has no curl). Ready means the database is reachable
and its schema is at this server's migration head, so a replica whose database is down or
not yet migrated is reported unhealthy and a load balancer can leave it out.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request


def main() -> int:
    port = os.environ.get("SEENN_PORT", "8000")
    url = f"http://127.0.0.1:{port}/readyz"
    try:
        with urllib.request.urlopen(url, timeout=4) as response:  # fixed URL
            return 0 if response.status == 200 else 1
    except (urllib.error.URLError, OSError) as error:
        print(f"not ready: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
