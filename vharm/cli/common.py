"""What every `vharm` subcommand shares: the parser that turns usage errors into one-line VharmErrors."""

from __future__ import annotations

import argparse

from vharm.errors import VharmError


class Parser(argparse.ArgumentParser):
    """argparse prints usage and exits on a bad flag; vharm's contract is one line on stderr and exit status 2."""

    def error(self, message):
        raise VharmError(f"{self.prog}: {message}")
