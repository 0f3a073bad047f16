"""`python -m orchestrator`: see orchestrator.cli."""

import os
import sys

from orchestrator.cli import main
from orchestrator.cli.interrupts import INTERRUPTED

if __name__ == "__main__":
    try:
        code = main()
    except KeyboardInterrupt:  # one more Ctrl-C, outside the run's own handling
        code = INTERRUPTED
    except BrokenPipeError:  # `... list | head`: the reader left; nothing more to say
        nowhere = os.open(os.devnull, os.O_WRONLY)
        os.dup2(nowhere, sys.stdout.fileno())  # no second error at exit's flush
        os.close(nowhere)
        # a run's lines go through progress.say, which outlives its reader: one that got here did not finish
        code = 1 if sys.argv[1:2] == ["run"] else 0
    if code == INTERRUPTED:
        # Ray is already shut down (cli._interrupted): skip the interpreter's finalisation, where a
        # Ray interrupted inside ray.init crashed with SIGSEGV instead of exiting 130
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)
