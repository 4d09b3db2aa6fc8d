"""What every `vharm` subcommand shares: the parser that turns usage errors into one-line VharmErrors, the
progress-bar rule."""

from __future__ import annotations

import argparse
import sys

from vharm.errors import VharmError


def show_progress(args) -> bool:
    """A progress bar unless --quiet, and only on a terminal (a bar in a log file is noise)."""
    return not args.quiet and sys.stderr.isatty()


class Parser(argparse.ArgumentParser):
    """argparse prints usage and exits on a bad flag; vharm's contract is one line on stderr and exit status 2."""

    def error(self, message):
        raise VharmError(f"{self.prog}: {message}")
