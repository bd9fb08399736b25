"""What this user knows about remote stores, kept between runs (diskcache).

It saves network round trips, never decides what is believed: blobs known to exist on a
remote are not uploaded again, and a record found missing is not asked for again until a
short time has passed. Everything read from a remote is still verified. A wrong entry
(the remote was wiped) costs a re-upload or a miss, never a wrong value.

The cache lives in the user's cache folder (``$HITHER_LOOKUP_CACHE`` moves it), apart from
any store: a store shared by a group is written by several users, this is per user.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

__all__ = ["LookupCache", "default_lookup_dir"]

ENV_LOOKUP = "HITHER_LOOKUP_CACHE"
#: how long a blob is remembered as present on a remote
BLOB_TTL = 7 * 24 * 3600.0


def default_lookup_dir() -> Path:
    """``$HITHER_LOOKUP_CACHE``, else ``<user cache dir>/hither/lookup``."""
    env = os.environ.get(ENV_LOOKUP)
    if env:
        return Path(env).expanduser()
    import platformdirs

    return platformdirs.user_cache_path("hither") / "lookup"


class LookupCache:
    """Per remote: blobs known present, records recently found absent.

    Args:
        directory: where the diskcache lives (default :func:`default_lookup_dir`).
    """

    def __init__(self, directory: str | os.PathLike[str] | None = None) -> None:
        self.directory = Path(directory) if directory is not None else default_lookup_dir()
        self._cache: Any = None
        self._lock = threading.Lock()

    def _db(self) -> Any:
        if self._cache is None:
            with self._lock:
                if self._cache is None:
                    try:
                        import diskcache
                    except ImportError as e:
                        raise ImportError("remote stores need diskcache: "
                                          "pip install 'hither[share]'") from e
                    self.directory.mkdir(parents=True, exist_ok=True)
                    self._cache = diskcache.Cache(str(self.directory), size_limit=1 << 30)
        return self._cache

    def has_blob(self, remote: str, hexdigest: str) -> bool:
        """Whether the blob was seen on ``remote``."""
        return self._db().get(f"b|{remote}|{hexdigest}") is not None

    def add_blob(self, remote: str, hexdigest: str) -> None:
        """Remember that the blob exists on ``remote``."""
        self._db().set(f"b|{remote}|{hexdigest}", 1, expire=BLOB_TTL)

    def recent_miss(self, remote: str, key: str) -> bool:
        """Whether ``remote`` lacked the record ``key`` a short while ago."""
        return self._db().get(f"m|{remote}|{key}") is not None

    def add_miss(self, remote: str, key: str, ttl: float) -> None:
        """Remember for ``ttl`` seconds that ``remote`` lacks the record ``key``."""
        if ttl > 0:
            self._db().set(f"m|{remote}|{key}", 1, expire=ttl)

    def forget_miss(self, remote: str, key: str) -> None:
        """The record ``key`` is on ``remote`` now."""
        self._db().delete(f"m|{remote}|{key}")

    def has_record(self, remote: str, key: str, checksum: str) -> bool:
        """Whether this version of record ``key`` was pushed to ``remote``."""
        return self._db().get(f"r|{remote}|{key}|{checksum}") is not None

    def add_record(self, remote: str, key: str, checksum: str) -> None:
        """Remember that this version of record ``key`` is on ``remote``."""
        self._db().set(f"r|{remote}|{key}|{checksum}", 1, expire=BLOB_TTL)

    def clear(self) -> None:
        """Forget everything."""
        self._db().clear()

    def close(self) -> None:
        """Close the database (it reopens on the next use)."""
        with self._lock:
            if self._cache is not None:
                self._cache.close()
                self._cache = None

    def __getstate__(self) -> dict[str, Any]:
        return {"directory": self.directory}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.directory = state["directory"]
        self._cache = None
        self._lock = threading.Lock()
