"""`alpro-fetch`: released ALPRO checkpoints by name into the cache, or any checkpoint into a directory.

    alpro-fetch --list
    alpro-fetch msrvtt-retrieval                          # into $ALPRO_HOME/checkpoints, prints the directory
    alpro-fetch msrvtt-retrieval --output /models/retrieval
    alpro-fetch ./model_step_best.pt --bert-config model_config.json --output /models/mine
    alpro-fetch ./native_dir --output /models/mine        # copy a native checkpoint directory

Exit status: 0 done, 2 a usage or settings error, 1 a download, verification or conversion failure.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any, NoReturn, Optional

from settings import SettingsError, SharedSettings, load_settings

from .checkpoint import read_native_config
from .download import FetchError, file_record, read_answers
from .hub import REGISTRY, ReleasedCheckpoint, fetch
from .install import convert_checkpoint, install_checkpoint

logger = logging.getLogger(__name__)

PROG = "alpro-fetch"
# Settings field -> the flag that overrides it (error messages name both).
FLAGS = {"home": "--home", "checkpoint_url": "--url"}
# Flags that describe a local official .pt; a released checkpoint's registry entry says these itself.
CONVERSION_FLAGS = ("bert_config", "vision_num_heads", "num_frames", "img_size", "max_text_len", "answers")


class FetchSettings(SharedSettings):
    """alpro-fetch reads ALPRO_HOME (the cache) and ALPRO_CHECKPOINT_URL (where the release is downloaded from)."""


class UsageError(Exception):
    """The command line asks for something that cannot be done; exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, like every other error of this program
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sources", nargs="*", metavar="NAME|PATH",
                        help="a released checkpoint's name (see --list), an official .pt file or a native directory")
    parser.add_argument("--list", action="store_true", help="list the released checkpoints and exit")
    parser.add_argument("--output", type=Path, metavar="DIR",
                        help="also put the native checkpoint in DIR (one source only), replacing a checkpoint there")
    parser.add_argument("--force", action="store_true", help="download and convert again even if cached")
    parser.add_argument("--home", type=Path, help="cache directory (ALPRO_HOME; default $XDG_CACHE_HOME/alpro)")
    parser.add_argument("--url", help="where the release is downloaded from (ALPRO_CHECKPOINT_URL)")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bar or progress lines")
    local = parser.add_argument_group("converting a local official .pt (with --output)")
    local.add_argument("--bert-config", type=Path, help="the release's model_config.json (required for a .pt)")
    local.add_argument("--vision-num-heads", type=int, help="TimeSformer heads (default 12)")
    local.add_argument("--num-frames", type=int, help="frames per clip (time embeddings are resized)")
    local.add_argument("--img-size", type=int, help="frame side in pixels (position embeddings are resized)")
    local.add_argument("--max-text-len", type=int, help="tokens per text (reference: 40 MSRVTT, 50 DiDeMo)")
    local.add_argument("--answers", type=Path, help="train_ans2label.json of a QA checkpoint")
    return parser


def describe(entry: ReleasedCheckpoint) -> str:
    parts = [f"{entry.num_frames} frames", f"text {entry.max_text_len} tokens"]
    if entry.num_answers:
        parts.append(f"{entry.num_answers} answers")
    return f"{entry.name:<18} {entry.description} [{', '.join(parts)}; {entry.checkpoint.filename}]"


def _plan(source: str, args: argparse.Namespace) -> tuple[str, Any]:
    """("name", entry) | ("native", dir) | ("official", file); an existing path wins over a name."""
    path = Path(source).expanduser()
    given = [f"--{flag.replace('_', '-')}" for flag in CONVERSION_FLAGS if getattr(args, flag) is not None]
    if path.is_dir():
        kind, value = "native", path
    elif path.is_file():
        kind, value = "official", path
    elif source in REGISTRY:
        kind, value = "name", REGISTRY[source]
    else:
        raise UsageError(f"{source!r} is neither an existing path nor a released checkpoint name "
                         f"({', '.join(sorted(REGISTRY))})")
    if kind != "official" and given:
        raise UsageError(f"{' '.join(given)} only apply to an official .pt file; {source} is a "
                         + ("released checkpoint, whose entry says them" if kind == "name" else "native directory"))
    if kind != "name" and args.output is None:
        raise UsageError(f"{source} is a local checkpoint: say where it goes with --output DIR")
    if kind == "official" and args.bert_config is None:
        raise UsageError(f"{source} is an official checkpoint file: give its model_config.json with --bert-config")
    if kind == "native":
        read_native_config(value)  # refused here, before anything is written
    return kind, value


def _conversion_overrides(args: argparse.Namespace) -> dict[str, Any]:
    overrides: dict[str, Any] = {"vision_num_heads": args.vision_num_heads or 12}
    for name in ("num_frames", "img_size", "max_text_len"):
        if getattr(args, name) is not None:
            overrides[name] = getattr(args, name)
    if args.answers is not None:
        overrides["answers"] = read_answers(args.answers)
    return overrides


def _fail(message: object, status: int) -> int:
    text = "; ".join(line.strip() for line in str(message).splitlines() if line.strip())
    print(f"{PROG}: error: {text}", file=sys.stderr)
    return status


def main(argv: Optional[list[str]] = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.list:
        for entry in REGISTRY.values():
            print(describe(entry))
        return 0
    if not args.sources:
        parser.error("give a checkpoint NAME or PATH (see --list)")
    if args.output is not None and len(args.sources) > 1:
        parser.error("--output takes a single NAME or PATH")
    try:
        plans = [_plan(source, args) for source in args.sources]
        settings = None
        if any(kind == "name" for kind, _ in plans):
            settings = load_settings(FetchSettings, {"home": args.home, "checkpoint_url": args.url}, flags=FLAGS)
    except (UsageError, SettingsError) as e:
        return _fail(e, 2)
    except ValueError as e:  # a native directory that is not one
        return _fail(e, 2)
    try:
        for kind, value in plans:
            if kind == "name":
                path = fetch(value.name, settings.home, settings.checkpoint_url, progress=not args.quiet,
                             force=args.force)
                if args.output is not None:
                    path = install_checkpoint(path, args.output)
            elif kind == "native":
                path = install_checkpoint(value, args.output)
            else:
                record = file_record(value, value.resolve().as_uri())
                path = convert_checkpoint(value, args.output, args.bert_config, _conversion_overrides(args),
                                          record=record)
            print(path, flush=True)
    except (FetchError, ValueError, OSError) as e:  # CheckpointError and ConfigError are ValueErrors
        return _fail(e, 1)
    except KeyboardInterrupt:
        return _fail("interrupted; run again to resume the download", 130)
    return 0


if __name__ == "__main__":
    sys.exit(main())
