"""The ETA statistics (``eta_stats.digest``) this process has decoded, by key and version.

A key's digest is about 3 KB of jsonb, read with the job's row on every progress write.
Every completion folded into it renews its version (``digest.t``), and the version names the
whole digest: ``app.domain.estimator.record`` makes the new digest from the previous one and
exactly what it hashes into the new version, and a digest without a version starts from a
hash of its whole content. A compaction stores a new version; a reset deletes the row, and
the key's next statistics start a new chain. So a digest is fully named by its app, mode,
key and version. The statement that reads a job is told which versions this process holds
(``Held.versions``) and returns the digest only for a version it lacks; the process then
decodes it once and keeps it here. A row whose digest did not come is given the one held
under its own app, mode and key and the version read in the same statement, never another
(two keys may reach one version: then the statement runs again, see
``app.db.repository``). The bound keeps the parameter small (at most ``KEPT`` versions) and
the memory too (each decoded digest is a few tens of KB at most).

A reader takes a ``Held`` before its statement and looks its rows up in that one, so a
digest evicted while the statement runs (other requests decoding other keys) is still
found. The digests kept are shared by every request of the process: nothing may change
them (``app.domain.eta.merged`` folds pending samples into a copy).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

KEPT = 64

Key = tuple[str, str, str, int]  # app_id, mode, eta_key, version


@dataclass(frozen=True)
class Held:
    """The digests held at one moment: never changed once made (``put`` makes a new one)."""

    versions: list[int] = field(default_factory=list)  # sorted, for ``eta_known``
    digests: dict[Key, dict[str, Any]] = field(default_factory=dict)

    def get(self, app_id: str, mode: str, eta_key: str, version: int) -> dict[str, Any] | None:
        key = (app_id, mode, eta_key, version)
        digest = self.digests.get(key)
        if digest is not None and key in _LRU:
            _LRU.move_to_end(key)
        return digest


# The same digests, least recently used first (the order of eviction).
_LRU: OrderedDict[Key, dict[str, Any]] = OrderedDict()
_held = Held()


def held() -> Held:
    """The digests held now, for one statement and the rows it returns."""
    return _held


def put(app_id: str, mode: str, eta_key: str, version: int, digest: dict[str, Any]) -> None:
    global _held
    key = (app_id, mode, eta_key, version)
    if key in _LRU:
        _LRU.move_to_end(key)
        return
    _LRU[key] = digest
    while len(_LRU) > KEPT:
        _LRU.popitem(last=False)
    _held = Held(sorted({k[3] for k in _LRU}), dict(_LRU))


def clear() -> None:
    global _held
    _LRU.clear()
    _held = Held()
