"""The Ray dashboard a run starts shows its Train runs: Train V2's state API (which needs
RAY_TRAIN_ENABLE_STATE_TRACKING=1 where the TorchTrainer is built) lists the GAN trial, by the name
the README gives (TRIAL NAME-TRIALKEY), while the run is going, to a caller holding the token
`ray get-auth-token` prints, and to no one else (token auth on, as the README says). A real run,
its own local Ray, its own home folder (the token Ray generates goes there)."""

import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from orchestrator.studies import resolve

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = ["train_images=256", "epochs=3", "sample_epochs=3", "fid_images=200", "num_workers=2"]


def train_runs(url: str, token: str) -> list[dict]:
    request = urllib.request.Request(f"{url}/api/train/v2/runs/v1", headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            body = json.loads(response.read())
    except (OSError, ValueError):
        return []
    return body.get("train_runs", []) if isinstance(body, dict) else []


def status_without_token(url: str) -> int:
    try:
        with urllib.request.urlopen(f"{url}/api/train/v2/runs/v1", timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_the_dashboard_lists_the_runs_train_runs_by_trial(data_dir, gan_cache, tmp_path):
    (exp,) = resolve("gan", "local", SETTINGS, sweeps=["lr=0.0002"], say=lambda _: None)
    # the trial's name (the study, its --set values, its swept ones), then its key
    expected = f"{exp.trial_names()[0]}-{exp.key(exp.trial_configs()[0])}"
    assert exp.trial_names()[0].startswith("gan-") and exp.trial_names()[0].endswith(",lr=0.0002")
    cmd = [sys.executable, "-m", "orchestrator", "run", "gan", "--results", str(tmp_path), "--data-dir", data_dir,
           "--set", f"cache_dir={gan_cache}", *(arg for s in SETTINGS for arg in ("--set", s)), "--sweep", "lr=0.0002"]
    home = tmp_path / "home"
    home.mkdir()
    env = {**os.environ, "RAY_ADDRESS": "", "HOME": str(home)}  # its own Ray, with the product's auth default
    env.pop("RAY_AUTH_MODE", None)
    env.pop("RAY_AUTH_TOKEN", None)
    run = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           start_new_session=True)
    seen, lines = [], []
    try:
        url = None
        deadline = time.time() + 300
        while time.time() < deadline and run.poll() is None:
            line = run.stdout.readline()
            lines.append(line)
            found = re.search(r"Ray dashboard: (http://\S+)", line)
            if found:
                url = found.group(1)
                break
        assert url, "".join(lines)[-3000:]
        import threading

        threading.Thread(target=lambda: lines.extend(run.stdout), daemon=True).start()  # keep the pipe drained
        assert "(token: `ray get-auth-token`)" in "".join(lines)
        token = subprocess.run([str(Path(sys.executable).parent / "ray"), "get-auth-token"], env=env,
                               capture_output=True, text=True, timeout=60).stdout.strip()
        assert token and (home / ".ray" / "auth_token").exists()
        assert status_without_token(url) == 401  # nothing without the token
        while time.time() < deadline and run.poll() is None and not seen:
            seen = [r for r in train_runs(url, token) if r.get("name") == expected]
            time.sleep(1)
        assert seen, (expected, train_runs(url, token), "".join(lines)[-3000:])  # asked while the run was going
        assert run.wait(timeout=300) == 0, "".join(lines)[-3000:]
    finally:
        if run.poll() is None:
            os.killpg(run.pid, 9)
            run.wait()
    assert seen[0].get("status") in ("INITIALIZING", "SCHEDULING", "RUNNING", "FINISHED"), seen[0]


def test_train_runs_are_named_by_trial_and_keep_an_earlier_folder_of_the_same_trial(tmp_path):
    """Train V2 resumes a run by its name: a trial whose folder exists under another name (another
    sweep named it, or an older version's STUDY-TRIALKEY) keeps that name; the rest get readable ones."""
    from orchestrator.engine.plan import train_run_names

    (tmp_path / "gan-aaaaaaaaaaaa").mkdir()  # an older version's name of trial aaaa...
    (tmp_path / "gan-20261130-000000-0000").mkdir()  # Tune's experiment folder: no trial's
    (tmp_path / "gan-lr=0.5-bbbbbbbbbbbb").mkdir()  # trial bbbb... under two names: the newest is kept
    (tmp_path / "gan-lr=0.4-bbbbbbbbbbbb").mkdir()
    os.utime(tmp_path / "gan-lr=0.5-bbbbbbbbbbbb", (1e9, 1e9))
    names = train_run_names(str(tmp_path), ["gan-lr=0.0002", "clip-image_model=a/b c,seed=1", "gan-lr=0.0001"],
                            ["aaaaaaaaaaaa", "bbbbbbbbbbbb", "cccccccccccc-20261130-000000-0000"])
    assert names == ["gan-aaaaaaaaaaaa", "gan-lr=0.4-bbbbbbbbbbbb",
                     "gan-lr=0.0001-cccccccccccc-20261130-000000-0000"]
    assert train_run_names(str(tmp_path / "absent"), ["gan"], ["dddddddddddd"]) == ["gan-dddddddddddd"]
