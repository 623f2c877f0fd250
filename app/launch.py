"""The ``omnifuse`` console script: settle the process's threading before torch is imported, then run the command.

Kept apart from ``app/cli.py`` because that module imports Lightning (and with it torch) at the top, and the OpenMP
wait policy is read once, when torch loads (:mod:`omnifuse.app.threads`).
"""

from __future__ import annotations

import sys


def main() -> int:
    from omnifuse.app import threads

    threads.prepare_process()
    from omnifuse.app.cli import main as cli_main

    return cli_main()


if __name__ == "__main__":
    sys.exit(main())
