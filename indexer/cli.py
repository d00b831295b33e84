"""`alpro-index VIDEOS_DIR --data-dir DIR --checkpoint CKPT`: the indexer's command line.

Exit codes: 0 done; 1 nothing could be indexed (or no video found); 2 bad arguments, unreadable
checkpoint, or a data dir made with another checkpoint (without --reindex); 3 another indexer holds
the data dir; 4 the metadata database failed mid-run (run again when it is back: the run resumes); 5 the
data dir's disk is full (free space and run again).
Under torchrun every rank runs this same command.
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Sequence

from sqlalchemy.exc import DBAPIError

from model.checkpoint import CheckpointError
from model.config import ConfigError
from model.download import FetchError

from store.manifest import IndexMismatchError
from store.pgvector.schema import VectorStoreError  # issue 21: no pgvector in the database
from .distributed import init_distributed, shutdown_distributed
from .errors import MetadataDatabaseError, database_reason, is_disk_full
from .lock import DataDirLockedError, DataDirLockError
from .pipeline import RunSummary, run_index
from .settings import SettingsError, build_parser, settings_from

logger = logging.getLogger("indexer")

EXIT_OK, EXIT_NOTHING_INDEXED, EXIT_USAGE, EXIT_LOCKED, EXIT_DATABASE, EXIT_DISK_FULL = 0, 1, 2, 3, 4, 5


class _TqdmHandler(logging.StreamHandler):
    """Log lines that do not tear the progress bar apart."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm import tqdm

            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # noqa: BLE001 - logging must never raise
            self.handleError(record)


def configure_logging(verbosity: int, rank: int = 0) -> None:
    level = logging.WARNING if verbosity <= 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    handler = _TqdmHandler()
    prefix = f"[rank {rank}] " if rank else ""
    handler.setFormatter(logging.Formatter(f"%(asctime)s {prefix}%(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    root = logging.getLogger()
    # replace only our own handler (a second call, or main() run inside a test process)
    root.handlers[:] = [h for h in root.handlers if not isinstance(h, _TqdmHandler)] + [handler]
    root.setLevel(logging.WARNING)
    # our packages at the asked level (store: publishing versions); third-party libraries stay at warnings
    for name in ("indexer", "model", "store"):
        logging.getLogger(name).setLevel(level)


def format_summary(summary: RunSummary) -> str:
    t = summary.timings
    lines = [
        f"indexed {summary.indexed} (partial {summary.partial}), unchanged {summary.unchanged}, "
        f"failed {summary.failed}, removed {summary.removed}, missing {summary.missing} "
        f"(of {summary.found} video files; {summary.skipped} other files skipped)",
        f"index version {summary.index_version} ({'new' if summary.published else 'unchanged'}): "
        f"{summary.segments} segments, {summary.index_type}"
        + (f", recall@10 {summary.recall_at_10:.3f}" if summary.recall_at_10 is not None else ""),
    ]
    if summary.decoded:
        lines.append(
            f"{summary.decoded} videos in {t.get('pipeline', 0):.1f} s ({summary.videos_per_s:.2f} videos/s); "
            f"decode {t.get('decode', 0):.1f} s (worker time), encode {t.get('encode', 0):.1f} s, "
            f"write {t.get('write', 0):.1f} s, encoder idle {t.get('encode_wait', 0):.1f} s; "
            f"bound by {summary.pipeline.get('bound_by')}"
        )
    if summary.previews_made or summary.previews_failed:
        lines.append(f"previews: {summary.previews_made} made ({summary.preview_bytes / 1e6:.1f} MB) in "
                     f"{t.get('previews', 0):.1f} s, {summary.previews_failed} failed")
    for failure in summary.failures[:20]:
        lines.append(f"  failed: {failure['path']}: {failure['reason']}")
    if summary.missing:
        lines.append(f"  {summary.missing} indexed videos are missing on disk; --prune drops them")
    return "\n".join(lines)


def _current_version(settings) -> int | None:
    from store.layout import DataDir

    try:
        return DataDir(settings.data_dir, settings.database_url).current_version()
    except Exception:  # noqa: BLE001 - only for the message
        return None


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = settings_from(args)
    except SettingsError as e:
        parser.print_usage(sys.stderr)
        print(f"alpro-index: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    dist = init_distributed(settings.device)
    configure_logging(args.verbose, dist.rank)
    try:
        summary = run_index(settings, dist=dist)
    except DataDirLockedError as e:
        print(f"alpro-index: error: {e}", file=sys.stderr)
        return EXIT_LOCKED
    except DataDirLockError as e:  # the lock itself failed (e.g. a filesystem without locks)
        print(f"alpro-index: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except (IndexMismatchError, CheckpointError, ConfigError, FileNotFoundError, FetchError, VectorStoreError) as e:
        print(f"alpro-index: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except (MetadataDatabaseError, DBAPIError) as e:
        print(f"alpro-index: error: the metadata database failed ({database_reason(e)}); videos finished before "
              f"it are kept, nothing was published: run alpro-index again when the database is back", file=sys.stderr)
        return EXIT_DATABASE
    except OSError as e:
        if not is_disk_full(e):
            raise
        current = _current_version(settings)
        print(f"alpro-index: error: no space left on the data dir's disk ({e}); "
              + (f"index version {current} stays current and served; " if current else "")
              + "videos finished before it are kept: free space and run alpro-index again", file=sys.stderr)
        return EXIT_DISK_FULL
    finally:
        shutdown_distributed(dist)
    if not dist.is_main:
        return EXIT_OK
    if args.json:
        print(json.dumps(summary.to_dict(), sort_keys=True))
    else:
        print(format_summary(summary))
    if summary.exit_code:
        print("alpro-index: error: " + ("nothing could be indexed" if summary.found else
                                        f"no video files found in {settings.videos_dir}"), file=sys.stderr)
    return summary.exit_code


if __name__ == "__main__":
    sys.exit(main())
