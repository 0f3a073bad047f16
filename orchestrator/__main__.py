"""`python -m orchestrator`: see orchestrator.cli."""

import os
import sys

from orchestrator.cli import main
from orchestrator.interrupts import INTERRUPTED

if __name__ == "__main__":
    try:
        code = main()
    except KeyboardInterrupt:  # one more Ctrl-C, outside the run's own handling
        code = INTERRUPTED
    except BrokenPipeError:  # `... list | head`: the reader left; nothing more to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit's flush
        code = 0
    if code == INTERRUPTED:
        # Ray is already shut down (cli._interrupted): skip the interpreter's finalisation, where a
        # Ray interrupted inside ray.init crashed with SIGSEGV instead of exiting 130
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)
