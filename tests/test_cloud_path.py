"""The cloud path's pieces that need no cluster: sizing trials from node types, what waiting trials
are told, a failed trial's real cause, joining the cluster a Ray job names, refusing Ray Client,
preflight of every trial's config, a deterministic FID classifier."""

import time

import torch

from orchestrator.engine import capacity
from orchestrator.cli import main
from orchestrator.engine import waiting
from orchestrator.engine.capacity import NodeType, max_worker_slots
from orchestrator.engine.waiting import Watcher, describe_wait
from orchestrator.engine.actors import root_cause

TYPES = [NodeType("head.cpu", {"CPU": 8, "train_driver": 64}, 1, head=True),
         NodeType("cpu.spot", {"CPU": 4}, 4),
         NodeType("gpu.spot.1x", {"CPU": 4, "GPU": 1}, 6),
         NodeType("gpu.ondemand.4x", {"CPU": 48, "GPU": 4}, 2)]
NO_CAPACITY = {"pending_launches": {"gpu.spot.1x": 2}, "node_availability_summary": {"node_availabilities": {
    "gpu.spot.1x": {"unavailable_node_information": {"category": "InsufficientInstanceCapacity",
                                                     "description": "no spot capacity in us-west-2a"}}}}}


def test_capacity_counts_the_nodes_the_autoscaler_may_add():
    gpu_worker = {"CPU": 4, "GPU": 1}
    assert max_worker_slots(TYPES, 12, gpu_worker) == 2 * 4 + 6 * 1  # 4-GPU nodes first, then 1-GPU ones
    assert max_worker_slots(TYPES, 3, gpu_worker) == 2 * 4 + 1  # the cluster's max_workers caps the nodes
    assert max_worker_slots(TYPES, 12, {"CPU": 64, "GPU": 1}) == 0  # no type could ever hold it
    assert max_worker_slots(TYPES, 12, {"CPU": 1}) == 8 + 4 * 4 + 6 * 4 + 2 * 48


def test_shipped_cluster_config_sizes_the_paper_gan(monkeypatch):
    from pathlib import Path

    monkeypatch.setenv(capacity.CONFIG_ENV, str(Path(__file__).resolve().parents[1] / "cluster.yaml"))
    types, max_workers = capacity.cluster_node_types(joined=True)
    assert {t.name for t in types if t.resources.get("GPU")} == {"gpu.spot.1x", "gpu.ondemand.4x"}
    assert max_worker_slots(types, max_workers, {"CPU": 4, "GPU": 1}) // 2 == 7  # 2-worker GPU trials at once


def test_ddp_trials_are_strictly_packed_where_one_node_type_holds_them(monkeypatch):
    """The shipped cluster's paper CLIP (2 workers x {1 GPU, 4 CPU}) fits one g5.12xlarge: STRICT_PACK,
    so the autoscaler starts that node instead of two single-GPU spot nodes; 8 such workers fit no
    node type: PACK; one worker, or no autoscaling config: PACK."""
    from pathlib import Path

    from orchestrator.studies.spec import Scaling

    monkeypatch.setenv(capacity.CONFIG_ENV, str(Path(__file__).resolve().parents[1] / "cluster.yaml"))
    paper = Scaling(num_workers=2, use_gpu=True, cpus_per_worker=4)
    assert capacity.placement_strategy(paper, joined=True) == "STRICT_PACK"
    assert capacity.placement_strategy(Scaling(num_workers=8, use_gpu=True, cpus_per_worker=4), joined=True) == "PACK"
    assert capacity.placement_strategy(Scaling(num_workers=1, use_gpu=True), joined=True) == "PACK"
    # and as many at once as fit whole on single nodes: the two 4-GPU nodes hold 2 each, the 1-GPU type none
    # (7 if every GPU counted, and 3 would wait on nodes the trials cannot use)
    assert capacity.max_concurrent(paper, joined=True, say=print) == 4
    assert capacity.max_worker_slots(TYPES, 12, {"CPU": 4, "GPU": 1}, group=2) == 2 * 4
    monkeypatch.delenv(capacity.CONFIG_ENV)
    assert capacity.placement_strategy(paper, joined=False) == "PACK"


def test_single_process_trials_ask_for_what_no_gpu_node_has(ray_session, monkeypatch):  # a local Ray: its CPUs
    """minimax on cluster.yaml: its trials ask for `cpu_node`, which only the head and the CPU type
    declare, so the autoscaler can never meet them with a GPU node; at once: what those hold."""
    from pathlib import Path

    from orchestrator.engine.capacity import single_process_resources
    from orchestrator.studies import Scaling

    monkeypatch.setenv(capacity.CONFIG_ENV, str(Path(__file__).resolve().parents[1] / "cluster.yaml"))
    need, at_once = single_process_resources(Scaling(cpus_per_worker=1), joined=True)
    assert need == {"CPU": 1, "cpu_node": 1}
    assert at_once == 8 + 4 * 4  # the head's 8 CPUs and 4 cpu.spot nodes of 4
    types, _ = capacity.cluster_node_types(joined=True)
    assert all(not t.resources.get("cpu_node") for t in types if t.resources.get("GPU"))
    monkeypatch.delenv(capacity.CONFIG_ENV)
    assert single_process_resources(Scaling(cpus_per_worker=2), joined=False) == ({"CPU": 2}, None)  # a local Ray


def test_short_trials_run_on_the_nodes_up_when_those_finish_them_before_a_node_boots(monkeypatch):
    """Paper minimax (~80 trials of ~0.1 s) on cluster.yaml's 8-CPU head: the slots up now, nothing
    asked of the autoscaler; trials of minutes each (T = 1e6) or node_boot_s=0: the cluster's largest."""
    import dataclasses

    from orchestrator.studies import EXPERIMENTS, WORKLOADS, Scaling

    monkeypatch.setattr(capacity, "slots_free", lambda need: 8)  # the head's cpu_node, free
    workload, exp = WORKLOADS["minimax"], EXPERIMENTS["minimax"]["paper"]
    configs = exp.trial_configs()
    seconds = [workload.estimated_seconds(c) for c in configs]
    assert len(configs) == 5 * 16 and 0.005 < sum(seconds) / len(configs) < 1  # measured: 20 us a step + 25 ns a lane
    need = {"CPU": 1, "cpu_node": 1}
    assert capacity.short_trials_slots(need, seconds, Scaling()) == 8
    long = [workload.estimated_seconds(dataclasses.replace(c, steps=1_000_000)) for c in configs]
    assert capacity.short_trials_slots(need, long, Scaling()) is None  # ~30 s each: 80 of them are worth nodes
    assert capacity.short_trials_slots(need, seconds, Scaling(node_boot_s=0)) is None
    assert capacity.short_trials_slots(need, [None] * len(configs), Scaling()) is None  # no estimate (GAN, CLIP)
    monkeypatch.setattr(capacity, "slots_free", lambda need: 0)  # nothing free that could run one (another run's)
    assert capacity.short_trials_slots(need, seconds, Scaling()) is None


def test_the_wait_is_described_in_the_autoscalers_words():
    assert describe_wait(NO_CAPACITY, TYPES, 1) == (
        "waiting for 2 GPU nodes (gpu.spot.1x): InsufficientInstanceCapacity: no spot capacity in us-west-2a")
    launching = {"pending_nodes": [["10.0.0.5", "cpu.spot", "WAITING-FOR-SSH"]]}
    assert describe_wait(launching, TYPES, 3) == "waiting for 1 CPU node (cpu.spot): nodes waiting-for-ssh"
    assert describe_wait({}, None, 2) == "2 trial(s) waiting for resources held by running trials"
    assert waiting.awaits_nodes(NO_CAPACITY) and waiting.awaits_nodes(launching)
    assert not waiting.awaits_nodes({"active_nodes": {"cpu.spot": 2}})  # a full cluster: trials queue


def test_the_watcher_says_what_trials_wait_for_and_gives_up_after_max_wait(monkeypatch):
    groups = {"pg-other": {"state": "PENDING"}}  # another job's, there before the run
    monkeypatch.setattr(waiting, "pending_groups", lambda _: dict(groups))
    monkeypatch.setattr(waiting, "autoscaler_report", lambda: NO_CAPACITY)
    lines, reasons = [], []
    with Watcher(lines.append, max_wait_s=1.0, types=TYPES, on_give_up=reasons.append, poll_s=0.2):
        time.sleep(1.5)
        assert not reasons  # another job's group waits: said, but it never ends this run
        groups["pg-ours"] = {"state": "PENDING"}
        deadline = time.time() + 10
        while not reasons and time.time() < deadline:
            time.sleep(0.1)
    assert lines and lines[0].startswith("waiting for 2 GPU nodes (gpu.spot.1x): InsufficientInstanceCapacity")
    assert len(reasons) == 1 and "gave up after waiting" in reasons[0] and "max_wait_s=1" in reasons[0]


def test_trials_queued_behind_running_ones_never_end_the_run(monkeypatch):
    monkeypatch.setattr(waiting, "pending_groups", lambda _: {"pg-queued": {"state": "PENDING"}})
    monkeypatch.setattr(waiting, "autoscaler_report", lambda: {"active_nodes": {"gpu.spot.1x": 6}})
    lines, reasons = [], []
    with Watcher(lines.append, max_wait_s=0.5, types=TYPES, on_give_up=reasons.append, poll_s=0.1):
        time.sleep(1.5)
    assert not reasons and not lines


def test_a_failed_trial_names_its_real_cause():
    class WorkerGroupError(RuntimeError):  # the shape of ray.train.WorkerGroupError: {rank: exception}
        def __init__(self, failures):
            super().__init__("Training failed due to worker errors: ... (see worker logs)")
            self.worker_failures = failures

    nccl = RuntimeError("Traceback (most recent call last):\n  ...\nProcessGroupNCCL is only supported with GPUs, no GPUs found!")
    failure = WorkerGroupError({1: ValueError("other rank"), 0: nccl})
    try:
        raise RuntimeError("TorchTrainer.fit failed") from failure
    except RuntimeError as wrapped:
        assert root_cause(wrapped) == "RuntimeError: ProcessGroupNCCL is only supported with GPUs, no GPUs found!"


def test_ray_client_addresses_are_refused_with_the_way_that_works(tmp_path, capsys, monkeypatch):
    assert main(["run", "minimax", "--address", "ray://127.0.0.1:10001", "--results", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "ray job submit" in err
    monkeypatch.setenv("RAY_ADDRESS", "ray://127.0.0.1:10001")
    assert main(["run", "minimax", "--results", str(tmp_path)]) == 2
    assert "ray job submit" in capsys.readouterr().err


def test_the_cluster_named_by_ray_address_is_joined(tmp_path, capsys, monkeypatch):
    import socket

    with socket.socket() as s:  # as inside a Ray job: RAY_ADDRESS names the cluster (here, a dead one)
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("RAY_ADDRESS", f"127.0.0.1:{port}")
    assert main(["run", "minimax", "--results", str(tmp_path)]) == 2
    assert f"cannot reach the Ray cluster at 127.0.0.1:{port}" in capsys.readouterr().err


def test_preflight_checks_every_trial_of_the_grid_before_ray_starts(data_dir, tmp_path, capsys, monkeypatch):
    # an empty Hugging Face cache, whatever this machine's holds: the BERT-family tokenizers fall back to
    # the offline MiniLM vocabulary, roberta-base has none (transformers reads the hub's constant per call)
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    subset = ["--set", "dataset=flickr8k_subset", "--set", "images_subdir=images", "--set", "captions_file=captions.csv",
              "--set", "splits_file=splits.csv"]
    started = time.perf_counter()
    code = main(["run", "clip", "--profile", "paper", "--data-dir", data_dir, "--results", str(tmp_path), *subset])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "roberta-base" in err  # the third pair's tokenizer
    assert time.perf_counter() - started < 60 and not (tmp_path / "clip").exists()


def test_the_fid_classifier_trains_deterministically(data_dir, gan_cache):
    from workloads.gan import data, quality

    x, y = data.load(data_dir, gan_cache, train=True, limit=512)
    state = torch.get_rng_state()
    first, second = quality.train_classifier(x, y, epochs=1), quality.train_classifier(x, y, epochs=1)
    assert torch.equal(torch.get_rng_state(), state)  # the caller's random stream is untouched
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), second.state_dict().values()))
    assert len(quality.classifier_digest(gan_cache)) == 12
