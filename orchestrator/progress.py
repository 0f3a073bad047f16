"""Progress lines from inside trials, printed by the driver while Tune runs.

Long steps inside a trial (CLIP feature extraction, image decoding: minutes on a fresh machine) say
what they do through `runtime.say`, which appends a line to `<artifact dir>/progress.log` (rank 0
only). Reports would not do: they are Tune results (rows, scheduler decisions, tracker metrics),
and Ray's worker logs stay out of the terminal. The artifact dir is on the results storage, which on
a cluster every node shares, so this thread in the driver reads every trial's file, wherever it runs,
and prints each new line once, prefixed with the study and the trial's name.

A step that counts (an extraction's images, an epoch's batches, the FID classifier's epochs) says
so: `say(line, progress=(what, done, total))`; the count travels after tabs in progress.log.

Where the terminal is one (stdout a TTY), bars sit under the lines: a `Bar` per running study (the
epochs of all its trials, or its trials where they have no epochs) and a bar per counted step while
it runs (`step`), each with tqdm's rate and time left; lines are written above them. In a pipe or a
log file there are no bars: the lines say it all (each says how far, and how long is left).
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import threading
from pathlib import Path
from typing import Callable

FILE = "progress.log"
_BARS: dict[str, "Bar"] = {}  # run key -> its study's bar, while one is drawn
_STEPS: dict = {}  # a step's description -> its bar (tqdm), while one is drawn
_LOCK = threading.Lock()  # steps are drawn from the Tail's thread and the main one


def say(line: str) -> None:
    """A line to the terminal: above the bars where any are drawn (else they would be torn). A reader
    that went away (`run all | head`) must not end the run: the rest goes nowhere."""
    try:
        if _BARS or _STEPS:
            from tqdm import tqdm

            tqdm.write(line, file=sys.stdout)
        else:
            print(line)
    except BrokenPipeError:
        nowhere = os.open(os.devnull, os.O_WRONLY)
        os.dup2(nowhere, sys.stdout.fileno())
        os.close(nowhere)


class Bar:
    """One study's progress bar (tqdm), drawn only where `file` is a terminal; `for_run` returns it by
    key (Tune pickles the callbacks that update it: they hold the key, never the bar)."""

    def __init__(self, key: str, study: str, totals: list[int], unit: str, file=None) -> None:
        file = file or sys.stdout
        self.key, self.study, self.totals, self.done, self.ended = key, study, totals, [0] * len(totals), 0
        self.bar, self._logs = None, None
        if _is_terminal(file):
            self.bar = _tqdm(file, total=sum(totals), desc=f"[{study}]", unit=unit,
                             bar_format="{desc} {bar} {n_fmt}/{total_fmt} {unit}s [{elapsed}<{remaining}]{postfix}")
            self.counts_trials = unit == "trial"  # else the postfix counts them
            if not self.counts_trials:
                self.bar.set_postfix_str(f"0/{len(totals)} trials", refresh=False)

    def __enter__(self) -> "Bar":
        if self.bar is not None:
            _BARS[self.key] = self
            # Ray's own log records (stderr) go above the bars too, not through them
            from tqdm.contrib.logging import logging_redirect_tqdm

            self._logs = logging_redirect_tqdm(loggers=[logging.getLogger("ray")])
            self._logs.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self._logs is not None:
            self._logs.__exit__(*exc)
        _BARS.pop(self.key, None)
        if self.bar is not None:
            self.bar.close()
        close_steps(f"[{self.study}] ")  # steps that never reached their end

    def step(self, index: int, done: int) -> None:
        """Trial `index` has done `done` of its units (a retried or exploited epoch never counts twice)."""
        done = min(done, self.totals[index])
        if self.bar is not None and self.done[index] == 0 and done > 1:
            # a trial resumed at epoch k+1 did k epochs in an earlier run: counted, but not in tqdm's rate
            self.bar.n += done - 1
            self.bar.initial += done - 1
            self.done[index] = done - 1
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


def append(artifact_dir: str, line: str, progress: tuple | None = None) -> None:
    """One line of `<artifact_dir>/progress.log`: the text, and where the step counts, its count
    (what, done, total) after tabs."""
    path = Path(artifact_dir) / FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    text = " ".join(str(line).split())  # one line, no tabs
    if progress is not None:
        what, done, total = progress
        text += f"\t{' '.join(str(what).split())}\t{int(done)}\t{int(total)}"
    with open(path, "a") as fh:  # one short line per write: appends do not interleave
        fh.write(text + "\n")


def _parse(record: str) -> tuple[str, tuple | None]:
    """(text, (what, done, total) or None) of a progress.log line."""
    text, *count = record.split("\t")
    if len(count) == 3 and count[1].isdigit() and count[2].isdigit():
        return text, (count[0], int(count[1]), int(count[2]))
    return text, None


def _is_terminal(file) -> bool:
    return bool(getattr(file, "isatty", lambda: False)())


def _tqdm(file, desc: str, **kwargs):
    """A bar as wide as the terminal (unknown: 100); a long description keeps its end (what is
    counted), so the count and the time left always fit."""
    from tqdm import tqdm

    width = shutil.get_terminal_size((100, 24)).columns
    width = width if width >= 20 else 100  # a terminal that reports no size
    room = max(20, int(width * 0.45))
    desc = desc if len(desc) <= room else "…" + desc[-(room - 1):]
    return tqdm(file=file, desc=desc, leave=False, ncols=width, **kwargs)


def step(desc: str, done: int, total: int, file=None) -> None:
    """Where `file` (stdout) is a terminal: a bar of one counted step (an extraction, an epoch's batches,
    the FID classifier's epochs) under the others, closed when `done` reaches `total`. Elsewhere
    nothing: the step's lines say how far it is."""
    file = file or sys.stdout
    if not _is_terminal(file):
        return
    with _LOCK:
        bar = _STEPS.get(desc)
        if bar is None and done < total:  # starts at `done`: tqdm's rate counts from here on
            bar = _STEPS[desc] = _tqdm(file, total=total, initial=done, desc=desc,
                                       bar_format="{desc} {bar} {n_fmt}/{total_fmt} [{elapsed}<{remaining}]")
        elif bar is not None and done > bar.n:
            bar.update(done - bar.n)
        elif bar is not None and done < bar.n:  # the step started over (a restarted worker)
            bar.reset(total=total)
            bar.update(done)
        if bar is not None and done >= total:
            bar.close()
            _STEPS.pop(desc, None)


def close_steps(prefix: str) -> None:
    """Close the step bars whose description starts with `prefix` (a trial's: its epoch reported, or it
    ended; a study's: its preflight failed); a step that stopped short of its total would stay drawn."""
    with _LOCK:
        for desc in [d for d in _STEPS if d.startswith(prefix)]:
            _STEPS.pop(desc).close()


def terminal(study: str):
    """`say(line, progress=None)` for a workload's steps before Ray starts (its preflight): the line,
    and in a terminal a bar of the step's count."""
    def tell(line: str, progress: tuple | None = None) -> None:
        say(f"[{study}] {line}")
        if progress is not None:
            step(f"[{study}] {progress[0]}", progress[1], progress[2])
    return tell


class Tail:
    """Prints new lines of each trial's progress file every `interval_s`, and once more at exit. With
    `active` (the indexes of the trials running now), a poll opens only their files and, once more,
    those of trials that just ended: its cost is the running trials', not the study's."""

    def __init__(self, say: Callable[[str], None], artifact_dirs: list[str], names: list[str],
                 interval_s: float = 1.0, step: Callable[[str, int, int], None] | None = None,
                 active: Callable[[], list[int]] | None = None) -> None:
        self.say, self.interval_s, self.step = say, interval_s, step  # step(desc, done, total): a counted step
        self.files = [(Path(d) / FILE, name) for d, name in zip(artifact_dirs, names)]
        self.active, self._polled = active, set()
        # lines already there (an earlier, interrupted run of the same trial) are not news: a stat per
        # trial, once, before any starts
        self.offsets = {path: path.stat().st_size if path.exists() else 0 for path, _ in self.files}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="orchestrator-progress", daemon=True)

    def __enter__(self) -> "Tail":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        if not self._thread.is_alive():  # else its poll is still going (slow storage): two would print twice
            self.poll()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.poll(self._indexes())

    def _indexes(self) -> list[int]:
        """The trials to poll: those running, and once more those that ran at the last poll."""
        if self.active is None:
            return list(range(len(self.files)))
        running = set(self.active())
        indexes, self._polled = sorted(running | self._polled), running
        return indexes

    def poll(self, indexes: list[int] | None = None) -> None:
        for index in (range(len(self.files)) if indexes is None else indexes):
            path, name = self.files[index]
            try:
                with open(path) as fh:
                    fh.seek(self.offsets[path])
                    text = fh.read()
            except OSError:
                continue
            complete = text[:text.rfind("\n") + 1]  # a line still being written waits for the next poll
            self.offsets[path] += len(complete.encode())
            for record in complete.splitlines():
                text, count = _parse(record)
                self.say(f"{name}: {text}")
                if count is not None and self.step is not None:
                    self.step(f"{name}: {count[0]}", count[1], count[2])
