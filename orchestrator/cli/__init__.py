"""The command line: `python -m orchestrator run|list|report|generate|validate-cluster`.

`main(argv)` returns an exit code (the tests call it in-process); the commands and options are in
args.py, `list` in listing.py, how a run ends on Ctrl-C in interrupts.py.
"""

from orchestrator.cli.app import main

__all__ = ["main"]
