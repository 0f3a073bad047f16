"""Compaction (issue 23): a run's parts of finished trials merged into one part per table, every row
read exactly once before, during (a kill between writing the compacted part and deleting what it
holds, or while writing it) and after; readers push filters down. The parts are written by the
project's own store, as runs write them."""

import os

import pandas as pd
import pyarrow.dataset as ds
import pytest

from orchestrator.results import compact
from orchestrator.results.store import ResultStore

RUN = "20261205-120000-abcd"
EARLIER = "20261204-120000-0123"


def write_run(store: ResultStore, attempts: list[str], epochs: int, run_id: str = RUN, status: str = "TERMINATED"):
    """Parts as a run writes them: steps per attempt and epoch, a trial row per attempt and run."""
    for a in attempts:
        for epoch in range(1, epochs + 1):
            store.write("gan", "steps", f"{a}-{epoch:06d}", pd.DataFrame(
                {"trial_key": [a], "attempt": [a], "run_id": [run_id], "epoch": [epoch], "loss": [epoch / 10]}))
        store.write("gan", "trials", f"{a}-{run_id}", pd.DataFrame(
            {"trial_key": [a], "attempt": [a], "run_id": [run_id], "status": [status], "fid": [1.0]}))


@pytest.fixture
def store(tmp_path):
    s = ResultStore(tmp_path / "results")
    s.open_for_writing()
    return s


def test_compaction_keeps_every_row_once_in_one_part_per_table(store):
    write_run(store, ["aaaaaaaaaaaa", "bbbbbbbbbbbb"], epochs=3)
    write_run(store, ["cccccccccccc"], epochs=2, status="ERROR")  # unfinished: left as it is
    before = {t: store.read("gan", t).sort_values(["trial_key", "run_id"]).reset_index(drop=True)
              for t in ("steps", "trials")}
    assert store.compact_run("gan", RUN, ["aaaaaaaaaaaa", "bbbbbbbbbbbb"]) == 6 + 2
    steps_dir = store.table_dir("gan", "steps")
    assert sorted(p.name for p in steps_dir.glob("*.parquet")) == [
        f"c-{RUN}.parquet", "cccccccccccc-000001.parquet", "cccccccccccc-000002.parquet"]
    for table, rows in before.items():
        after = store.read("gan", table).sort_values(["trial_key", "run_id"]).reset_index(drop=True)
        pd.testing.assert_frame_equal(after[rows.columns], rows)
    assert pd.read_parquet(steps_dir).shape[0] == 8  # plain pandas reads the compacted folder whole too
    # a replayed epoch of a compacted trial is known to be written (sink.py skips it)
    assert store.exists("gan", "steps", "aaaaaaaaaaaa-000002") and not store.exists("gan", "steps", "aaaaaaaaaaaa-000009")


def test_a_kill_between_writing_the_compacted_part_and_deleting_its_sources_reads_each_row_once(store, monkeypatch):
    write_run(store, ["aaaaaaaaaaaa", "bbbbbbbbbbbb"], epochs=2)
    expected = len(store.read("gan", "steps"))
    deleted = []

    def killed(self, missing_ok=False):  # the process dies after the first delete of a source
        if not self.exists():  # the writer's temporary, already renamed into place
            return
        if deleted:
            raise KeyboardInterrupt
        deleted.append(self)
        os.remove(self)

    monkeypatch.setattr("pathlib.Path.unlink", killed)
    with pytest.raises(KeyboardInterrupt):
        store.compact_run("gan", RUN, ["aaaaaaaaaaaa", "bbbbbbbbbbbb"])
    monkeypatch.undo()
    steps_dir = store.table_dir("gan", "steps")
    assert len(list(steps_dir.glob("*.parquet"))) == 1 + 3  # the compacted part and 3 of its 4 sources
    assert len(store.read("gan", "steps")) == expected  # each row once
    assert not store.read("gan", "steps").duplicated(["trial_key", "epoch"]).any()
    assert store.sweep_temporaries() == 3  # the next run (holding the lock) finishes the compaction
    assert [p.name for p in steps_dir.glob("*.parquet")] == [f"c-{RUN}.parquet"]
    assert len(store.read("gan", "steps")) == expected


def test_a_kill_while_writing_the_compacted_part_leaves_the_parts_as_they_were(store, monkeypatch):
    import pyarrow.parquet as pq

    write_run(store, ["aaaaaaaaaaaa"], epochs=3)
    steps_dir = store.table_dir("gan", "steps")
    names = sorted(p.name for p in steps_dir.glob("*.parquet"))
    real = pq.write_table

    def torn(table, where, **kwargs):  # half a file, then the process dies
        real(table, where, **kwargs)
        with open(where, "r+b") as fh:
            fh.truncate(100)
        raise KeyboardInterrupt

    monkeypatch.setattr(pq, "write_table", torn)
    with pytest.raises(KeyboardInterrupt):
        store.compact_run("gan", RUN, ["aaaaaaaaaaaa"])
    monkeypatch.undo()
    assert sorted(p.name for p in steps_dir.glob("*.parquet")) == names  # the temporary was hidden, then removed
    assert len(store.read("gan", "steps")) == 3


def test_only_the_parts_of_the_given_attempts_are_matched():
    stems = ["aaaaaaaaaaaa-000001", "aaaaaaaaaaaa", f"aaaaaaaaaaaa-{RUN}", f"aaaaaaaaaaaa-{EARLIER}",
             "aaaaaaaaaaab-000001", "aaaaaaaaaaaa-00001", f"aaaaaaaaaaaa-{RUN}-000001", f"c-{RUN}"]
    assert compact.trial_parts(stems, ["aaaaaaaaaaaa"]) == stems[:4]
    # a --fresh attempt is named key-run_id: its own parts match it exactly
    assert compact.trial_parts(stems, [f"aaaaaaaaaaaa-{RUN}"]) == [f"aaaaaaaaaaaa-{RUN}", f"aaaaaaaaaaaa-{RUN}-000001"]


def test_finished_pushes_its_filter_down_and_reads_compacted_and_loose_parts_alike(store):
    write_run(store, ["aaaaaaaaaaaa", "bbbbbbbbbbbb"], epochs=1, run_id=EARLIER)
    store.compact_run("gan", EARLIER, ["aaaaaaaaaaaa", "bbbbbbbbbbbb"])
    write_run(store, ["aaaaaaaaaaaa"], epochs=1, status="ERROR")  # a later failed attempt, loose
    write_run(store, ["dddddddddddd"], epochs=1)
    rows = store.finished("gan", ["aaaaaaaaaaaa", "dddddddddddd", "eeeeeeeeeeee"])
    assert sorted(zip(rows["trial_key"], rows["run_id"])) == [("aaaaaaaaaaaa", EARLIER), ("dddddddddddd", RUN)]
    assert store.read("gan", "trials", where=ds.field("status") == "ERROR")["trial_key"].tolist() == ["aaaaaaaaaaaa"]
    assert store.read("gan", "trials", columns=["trial_key", "no_such_column"]).columns.tolist() == ["trial_key"]


def spec(store: ResultStore, run_id: str, keys: list[str], kept: tuple[str, ...] = ()):
    """A run's spec as cli/run.py records it (the `runs` table): the trials it runs or keeps."""
    store.write_spec("gan", run_id, pd.DataFrame({
        "run_id": run_id, "study": "gan", "profile": "local", "trial_index": range(len(keys)), "trial_key": keys,
        "trial_name": keys, "params": "{}", "scheduler": "fifo", "kept": [k in kept for k in keys],
        "stored_key": keys, "code_version": "test", "started_at": 0.0}))


def test_a_lookup_opens_the_parts_of_the_runs_that_name_its_trials_and_reads_each_row_once(store, monkeypatch):
    """The start-of-run lookup and `report` read the trials parts of the runs whose specs name the
    trials (and of runs with no spec), not every part of the folder's history; the runs table is
    one part however many runs wrote it."""
    r1, r2, r3, r4 = (f"2026120{d}-120000-000{d}" for d in (1, 2, 3, 4))
    spec(store, r1, ["k1"])
    write_run(store, ["k1"], epochs=1, run_id=r1)  # finished, killed before compacting: loose parts
    spec(store, r2, ["k2"])
    write_run(store, ["k2"], epochs=1, run_id=r2)
    store.compact_run("gan", r2, ["k2"])
    spec(store, r3, ["k1", "k3"], kept=("k1",))  # keeps k1's row and compacts its parts with its own
    write_run(store, ["k3"], epochs=1, run_id=r3)
    store.compact_run("gan", r3, ["k1", "k3"])
    write_run(store, ["k4"], epochs=1, run_id=r4)  # a run whose spec was never written
    assert [p.name for p in store.table_dir("gan", "runs").glob("*.parquet")] == [f"c-{r3}.parquet"]
    assert len(store.read("gan", "runs")) == 4  # the specs' rows, each once

    opened = []
    listed = compact.parts
    monkeypatch.setattr(compact, "parts", lambda d, runs=None: opened.extend(p.name for p in listed(d, runs)) or listed(d, runs))
    rows = store.finished("gan", ["k1", "k2", "k4", "k5"])
    assert sorted(zip(rows["trial_key"], rows["run_id"])) == [("k1", r1), ("k2", r2), ("k4", r4)]
    opened.clear()
    assert store.finished("gan", ["k2"])["run_id"].tolist() == [r2]
    assert sorted(opened) == [f"c-{r3}.parquet", f"k2-{r2}.parquet", f"k4-{r4}.parquet"]  # the runs table, r2's row (one part: not compacted), r4's
    opened.clear()
    rows, missing = store.current("gan")  # r3's spec: k1 (kept, compacted by r3) and k3
    assert sorted(zip(rows["trial_key"], rows["run_id"])) == [("k1", r1), ("k3", r3)] and missing == 0
    assert f"k2-{r2}.parquet" not in opened
    assert store.current("gan", r2)[0]["trial_key"].tolist() == ["k2"]  # any run, by id
