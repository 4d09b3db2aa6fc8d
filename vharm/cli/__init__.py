"""`vharm` command line: flags map onto the typed configs; bad input -> one line on stderr, exit status 2.

Exit status: 0 success, 1 internal error, 2 bad input or usage, 130/143 stopped by SIGINT/SIGTERM. Each
subcommand module (train, harmonize, evaluate, serve) registers its parsers; heavy imports wait until a command runs.
"""

from __future__ import annotations

import argparse
import ctypes
import sys

from vharm.cli import evaluate, harmonize, serve, train
from vharm.cli.common import Parser
from vharm.errors import VharmError


def build_parser() -> argparse.ArgumentParser:
    from vharm import __version__

    p = Parser(prog="vharm", description="Temporally coherent video harmonization (Huang et al. 2020) on a CPU.")
    p.add_argument("--version", action="version", version=f"vharm {__version__}")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)
    train.add_parsers(sub)
    harmonize.add_parsers(sub)
    evaluate.add_parsers(sub)
    serve.add_parsers(sub)
    return p


def reuse_frame_buffers() -> None:
    """glibc's allocator: keep freed blocks of up to 64 MB in the heap (up to 256 MB of them) instead of unmapping
    them. Each video frame allocates full-resolution arrays (a 1080p float mask: 8 MB; a 4K RGB frame: 25 MB), which
    glibc would otherwise map afresh and fault in page by page on every frame: `Segmenter.step` at 1080p took 49 ms
    a frame with glibc's defaults and 37 ms with this, on one core (`MALLOC_MMAP_THRESHOLD_`/`MALLOC_TRIM_THRESHOLD_`
    in the environment measured the same). A no-op where the C library is not glibc."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    m_trim_threshold, m_mmap_threshold = -1, -3  # malloc.h
    libc.mallopt(m_mmap_threshold, 64 << 20)
    libc.mallopt(m_trim_threshold, 256 << 20)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    reuse_frame_buffers()
    debug = "--debug" in argv
    try:
        args = build_parser().parse_args(argv)
        args.func(args)
        return 0
    except VharmError as e:
        if debug:
            raise
        print(f"vharm: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("vharm: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - the last line of defence: one line, status 1
        if debug:
            raise
        print(f"vharm: internal error: {e.__class__.__name__}: {e} (run with --debug for a traceback)",
              file=sys.stderr)
        return 1
