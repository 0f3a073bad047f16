"""Shared fixtures: Ray is started once per test session (a per-test init costs ~4 s)."""

import os

# Test-only Ray settings (never the product's defaults): no auth token, no usage stats, quick health
# checks so Train runs end promptly.
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no hub here: fail at once instead of timing out

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _environment_restored():
    """Each test leaves os.environ as it found it: in-process runs set WANDB_MODE, MLFLOW_*, TUNE_*,
    RAY_* (setdefault), which would otherwise reach every later test (and make results depend on order).
    Session fixtures (Ray) are set up before this snapshot, so their settings stay."""
    before = dict(os.environ)
    yield
    for key in set(os.environ) - set(before):
        del os.environ[key]
    for key, value in before.items():
        if os.environ.get(key) != value:
            os.environ[key] = value


@pytest.fixture(scope="session")
def ray_session():
    import ray

    from orchestrator.engine.session import DRIVER_RESOURCE, DRIVER_SLOTS

    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
        object_store_memory=256 * 2**20,
        resources={DRIVER_RESOURCE: DRIVER_SLOTS},
    )
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def data_dir():
    """The real data folder (FashionMNIST/, flickr8k/, flickr8k_subset/), from ORCHESTRATOR_DATA_DIR."""
    path = os.environ.get("ORCHESTRATOR_DATA_DIR")
    if not path:
        pytest.skip("ORCHESTRATOR_DATA_DIR is not set: point it at the folder holding FashionMNIST/ and flickr8k/ (../shared/data)")
    return path


@pytest.fixture(scope="session")
def gan_cache(data_dir, tmp_path_factory):
    """A cache holding extracted FashionMNIST and the trained FID classifier, built once per session."""
    from workloads.gan import data, quality

    cache = str(tmp_path_factory.mktemp("cache"))
    data.locate(data_dir, cache)
    quality.load_classifier(data_dir, cache)
    return cache


# --- skips: reported at the end of every run; in CI (ORCHESTRATOR_CI=1, .ci/run) only these may skip ---
CI_MAY_SKIP = (
    "SyncBatchNorm needs CUDA",  # GPU-only: CI machines have no GPU (bench/bench_gpu.py on one that has)
    "this CPU has no native bf16",  # the CPU CI drew (printed below) decides
    "$(",  # README commands whose values come from the shell (test_readme)
)


def _cpu() -> str:
    from pathlib import Path

    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "?")
    flags = set(info.split())
    return f"{model}; native bf16: {'yes' if flags & {'avx512_bf16', 'amx_tile'} else 'no'}"


def pytest_sessionfinish(session, exitstatus):
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = reporter.stats.get("skipped", []) if reporter else []
    if not reporter:
        return
    reporter.ensure_newline()
    reporter.write_sep("-", f"{len(skipped)} skipped (CPU: {_cpu()})")
    forbidden = []
    for report in skipped:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        reason = reason.removeprefix("Skipped: ")
        allowed = any(marker in reason for marker in CI_MAY_SKIP)
        reporter.write_line(f"skipped {report.nodeid}: {reason}")
        if not allowed:
            forbidden.append(report.nodeid)
    if forbidden and os.environ.get("ORCHESTRATOR_CI") == "1":
        reporter.write_line(f"CI: {len(forbidden)} tests skipped that must run in CI (a component or data is "
                            f"missing): {', '.join(forbidden)}", red=True)
        session.exitstatus = 1
