"""Progress lines from inside trials, printed by the driver while Tune runs.

Long steps inside a trial (CLIP feature extraction, image decoding: minutes on a fresh machine) say
what they do through `runtime.say`, which appends a line to `<artifact dir>/progress.log` (rank 0
only). Reports would not do: they are Tune results (rows, scheduler decisions, tracker metrics),
and Ray's worker logs stay out of the terminal. The artifact dir is on the results storage, which on
a cluster every node shares, so this thread in the driver reads every trial's file, wherever it runs,
and prints each new line once, prefixed with the study and the trial's name.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Callable

FILE = "progress.log"


def append(artifact_dir: str, line: str) -> None:
    path = Path(artifact_dir) / FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:  # one short line per write: appends do not interleave
        fh.write(line.rstrip("\n") + "\n")


class Tail:
    """Prints new lines of each trial's progress file every `interval_s`, and once more at exit."""

    def __init__(self, say: Callable[[str], None], artifact_dirs: list[str], names: list[str],
                 interval_s: float = 2.0) -> None:
        self.say, self.interval_s = say, interval_s
        self.files = [(Path(d) / FILE, name) for d, name in zip(artifact_dirs, names)]
        # lines already there (an earlier, interrupted run of the same trial) are not news
        self.offsets = {path: path.stat().st_size if path.exists() else 0 for path, _ in self.files}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="orchestrator-progress", daemon=True)

    def __enter__(self) -> "Tail":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.poll()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.poll()

    def poll(self) -> None:
        for path, name in self.files:
            try:
                with open(path) as fh:
                    fh.seek(self.offsets[path])
                    text = fh.read()
            except OSError:
                continue
            complete = text[:text.rfind("\n") + 1]  # a line still being written waits for the next poll
            self.offsets[path] += len(complete.encode())
            for line in complete.splitlines():
                self.say(f"{name}: {line}")
