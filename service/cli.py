"""`alpro-serve`: run the search service with uvicorn.

    alpro-serve --data-dir DIR [--host 127.0.0.1] [--port 8000] [--checkpoint CKPT] [--qa-checkpoint CKPT]

Every other setting comes from ALPRO_* environment variables (service/settings.py); flags win over them.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from typing import Optional


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="alpro-serve", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", help="the indexer's data dir (or ALPRO_DATA_DIR)")
    parser.add_argument("--host", help="bind address (default 127.0.0.1, or ALPRO_HOST)")
    parser.add_argument("--port", type=int, help="port (default 8000, or ALPRO_PORT)")
    parser.add_argument("--checkpoint", help="retrieval checkpoint: path or released name (default: the index's)")
    parser.add_argument("--bert-config", help="model_config.json for official .pt checkpoints")
    parser.add_argument("--qa-checkpoint", help="QA checkpoint: path or released name; without one /qa answers 501")
    parser.add_argument("--device", help="auto, cpu, cuda, cuda:N (or ALPRO_DEVICE)")
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16", "int8"),
                        help="int8: the models' Linear layers in int8 on the CPU; else as the device suits "
                             "(or ALPRO_PRECISION)")
    parser.add_argument("--vector-store", choices=("faiss", "pgvector"),
                        help="where the index's vectors are: faiss (the data dir, default) or pgvector (the "
                             "PostgreSQL database of ALPRO_DATABASE_URL) (or ALPRO_VECTOR_STORE)")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    parser.add_argument("--no-access-log", action="store_true", help="do not log every request")
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    # Before torch loads OpenMP: idle OpenMP workers sleep instead of spinning. The model thread's workers
    # otherwise keep spinning after each call and take the cores the event loop and the DB threads need
    # (measured on 2 busy cores: -0.2 ms HTTP overhead, text encoding 1.5-4x faster). Set it to ACTIVE
    # to override.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from settings import SettingsError, demote_library_logs, load_settings

    demote_library_logs()  # before anything imports FAISS, whose loader logs its probing at INFO

    from .settings import FLAGS, Settings  # after logging is configured

    try:
        settings = load_settings(Settings, {name: getattr(args, name) for name in FLAGS}, flags=FLAGS)
    except SettingsError as e:
        print(f"alpro-serve: invalid settings: {e}", file=sys.stderr)
        return 2

    import uvicorn

    from .app import create_app

    # uvicorn raises a stop signal again once it has shut down, for the handler found at start: a stop asked
    # for is a clean exit, so that handler ignores it and the process exits 0 (docker, systemd see success)
    for stop in (signal.SIGTERM, signal.SIGINT):
        signal.signal(stop, lambda *_: None)
    app = create_app(settings)
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level=args.log_level,
                            access_log=not args.no_access_log, timeout_graceful_shutdown=settings.shutdown_grace_s)
    _draining_server(config, app.state.drain, settings.shutdown_grace_s).run()
    return 0


def _draining_server(config, drain, grace_s: float):
    """uvicorn's server, stopping in two steps on SIGTERM / Ctrl-C: new requests get 503 while those in flight
    finish (up to the grace period), then uvicorn shuts down. A second signal stops at once."""
    import threading

    import uvicorn

    class DrainingServer(uvicorn.Server):
        def handle_exit(self, sig, frame) -> None:
            if drain.draining:
                super().handle_exit(sig, frame)
                return
            drain.begin()
            logging.getLogger("service").info("stopping: new requests get 503, those in flight finish")
            threading.Thread(target=self._stop_when_idle, args=(sig, frame), daemon=True).start()

        def _stop_when_idle(self, sig, frame) -> None:
            drain.wait_idle(grace_s)
            super().handle_exit(sig, frame)

    return DrainingServer(config)


if __name__ == "__main__":
    sys.exit(main())
