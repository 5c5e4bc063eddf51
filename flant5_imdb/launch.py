"""Which process of a launch speaks, and closing a launch's process group: what every script needs of
`accelerate launch`, importable before torch (a script refuses a bad option before the heavy imports)."""

from __future__ import annotations

import functools
import os
import sys


def speaker() -> bool:
    """Whether this process speaks for all: the first of a launch (a launcher sets RANK), or the only one."""
    return int(os.environ.get("RANK", "0")) == 0


def closes_launch(main):
    """A script's `main(argv)` that may run as one process of `accelerate launch`: the launch's process
    group is closed before the process exits, as training's `end_training` does (left to the
    interpreter's exit, gloo's threads can abort a finished process). Nothing is imported for it where
    torch never was (an option refused before the heavy imports)."""

    @functools.wraps(main)
    def run(argv: list[str] | None = None) -> int:
        try:
            return main(argv)
        finally:
            if "torch" in sys.modules:
                from flant5_imdb.accel import close_processes

                close_processes()

    return run
