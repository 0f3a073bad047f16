"""Progress lines from inside trials, printed by the driver while Tune runs.

Long steps inside a trial (CLIP feature extraction, image decoding: minutes on a fresh machine) say
what they do through `runtime.say`, which appends a line to `<artifact dir>/progress.log` (rank 0
only). Reports would not do: they are Tune results (rows, scheduler decisions, tracker metrics),
and Ray's worker logs stay out of the terminal. The artifact dir is on the results storage, which on
a cluster every node shares, so this thread in the driver reads every trial's file, wherever it runs,
and prints each new line once, prefixed with the study and the trial's name.

Where the terminal is one (stdout a TTY), a `Bar` per running study sits under the lines: its units
are the epochs of all its trials (studies without epochs: its trials), with tqdm's rate and time
left; lines are written above it. In a pipe or a log file there is no bar: the lines say it all.
"""

from __future__ import annotations

import shutil
import sys
import threading
from pathlib import Path
from typing import Callable

FILE = "progress.log"
_BARS: dict[str, "Bar"] = {}  # run key -> its study's bar, while one is drawn


def say(line: str) -> None:
    """A line to the terminal: above the bars where any are drawn (else they would be torn)."""
    if _BARS:
        from tqdm import tqdm

        tqdm.write(line, file=sys.stdout)
    else:
        print(line)


class Bar:
    """One study's progress bar (tqdm), drawn only where `file` is a terminal; `for_run` returns it by
    key (Tune pickles the callbacks that update it: they hold the key, never the bar)."""

    def __init__(self, key: str, study: str, totals: list[int], unit: str, file=None) -> None:
        file = file or sys.stdout
        self.key, self.totals, self.done, self.ended = key, totals, [0] * len(totals), 0
        self.bar = None
        if getattr(file, "isatty", lambda: False)():
            from tqdm import tqdm

            self.bar = tqdm(total=sum(totals), desc=f"[{study}]", unit=unit, file=file, leave=False,
                            ncols=shutil.get_terminal_size((100, 24)).columns,  # (a terminal of unknown size: 100)
                            bar_format="{desc} {bar} {n_fmt}/{total_fmt} {unit}s [{elapsed}<{remaining}]{postfix}")
            self.counts_trials = unit == "trial"  # else the postfix counts them
            if not self.counts_trials:
                self.bar.set_postfix_str(f"0/{len(totals)} trials", refresh=False)

    def __enter__(self) -> "Bar":
        if self.bar is not None:
            _BARS[self.key] = self
        return self

    def __exit__(self, *exc) -> None:
        _BARS.pop(self.key, None)
        if self.bar is not None:
            self.bar.close()

    def step(self, index: int, done: int) -> None:
        """Trial `index` has done `done` of its units (a retried or exploited epoch never counts twice)."""
        done = min(done, self.totals[index])
        if self.bar is not None and done > self.done[index]:
            self.bar.update(done - self.done[index])
        self.done[index] = max(done, self.done[index])

    def end(self, index: int) -> None:
        """Trial `index` ended (finished, stopped early or failed): its units are spent."""
        self.step(index, self.totals[index])
        self.ended += 1
        if self.bar is not None and not self.counts_trials:
            self.bar.set_postfix_str(f"{self.ended}/{len(self.totals)} trials")


def for_run(key: str) -> Bar | None:
    return _BARS.get(key)


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
