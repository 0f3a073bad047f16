"""cluster-k8s.yaml (a KubeRay RayJob) and the Dockerfile, checked offline: no Kubernetes cluster runs
here. The manifest against KubeRay v1.7.0's CRDs (../shared/kuberay, unknown fields as errors, as
strict field validation does) and the rules the operator enforces in code; its groups against what
`run all --profile paper` asks for, with the arithmetic the CLI sizes trials with."""

import os
import re
from pathlib import Path

import pytest
import yaml

from orchestrator.cli import main
from orchestrator.clusters import kuberay
from orchestrator.engine import capacity
from orchestrator.studies import resolve
from orchestrator.studies.spec import SpecError

ROOT = Path(__file__).resolve().parents[1]
MANIFEST = ROOT / "cluster-k8s.yaml"


@pytest.fixture(scope="module")
def crds():
    path = Path(os.environ.get("ORCHESTRATOR_KUBERAY_CRDS", ROOT.parent / "shared" / "kuberay"))
    if not (path / "ray.io_rayjobs.yaml").exists():
        pytest.skip(f"KubeRay's CRDs are not in {path} (set ORCHESTRATOR_KUBERAY_CRDS to ../shared/kuberay)")
    return path


def job() -> dict:
    return kuberay.ray_resource(kuberay.load(MANIFEST))


def test_the_manifest_passes_the_crds_and_the_operators_rules(crds):
    doc = kuberay.validate(MANIFEST, crds)
    spec = doc["spec"]["rayClusterSpec"]
    assert doc["kind"] == "RayJob" and doc["spec"]["entrypoint"] == "python -m orchestrator run all --profile paper"
    assert spec["autoscalerOptions"]["version"] == "v2" and spec["enableInTreeAutoscaling"]
    assert spec["authOptions"]["mode"] == "token" and doc["spec"]["shutdownAfterJobFinishes"]
    storage = kuberay.load(ROOT / "cluster-k8s-storage.yaml")  # apart: deleting the job never deletes the results
    volume = next(d for d in storage if d["kind"] == "PersistentVolumeClaim")
    assert volume["spec"]["accessModes"] == ["ReadWriteMany"]
    assert not any(d["kind"] == "PersistentVolumeClaim" for d in kuberay.load(MANIFEST))
    loader = next(d for d in storage if d["kind"] == "Pod")  # copies data in and results out
    assert loader["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"] == volume["metadata"]["name"]
    for name, group in kuberay._groups(doc):  # every pod mounts the shared volume where the env points
        pod = group["template"]["spec"]
        assert pod["volumes"][0]["persistentVolumeClaim"]["claimName"] == volume["metadata"]["name"], name
        assert {"medium": "Memory"} in [v.get("emptyDir") for v in pod["volumes"]], name  # /dev/shm beyond 64 MiB
        env = {e["name"]: e["value"] for e in pod["containers"][0]["env"]}
        assert all(env[k].startswith(pod["containers"][0]["volumeMounts"][0]["mountPath"])
                   for k in ("ORCHESTRATOR_DATA_DIR", "ORCHESTRATOR_CACHE_DIR", "ORCHESTRATOR_RESULTS")), name


def _break(path, change) -> Path:
    docs = kuberay.load(MANIFEST)
    change(kuberay.ray_resource(docs))
    path.write_text(yaml.safe_dump_all(docs))
    return path


def _cluster(doc):
    return doc["spec"]["rayClusterSpec"]


@pytest.mark.parametrize("change, message", [
    (lambda d: _cluster(d)["headGroupSpec"].__setitem__("numOfHost", 1), "'numOfHost' was unexpected"),  # a typo
    (lambda d: d["spec"].__setitem__("shutdownAfterJobFinishes", False), "ttlSecondsAfterFinished needs"),
    (lambda d: _cluster(d)["workerGroupSpecs"][1]["template"]["spec"].__setitem__("restartPolicy", "Always"),
     "autoscaler v2 needs restartPolicy Never"),
    (lambda d: _cluster(d)["workerGroupSpecs"][0].__setitem__("minReplicas", 5), "minReplicas 5 > maxReplicas 4"),
    (lambda d: _cluster(d)["headGroupSpec"]["rayStartParams"].__setitem__("num-cpus", "8"),
     "resources set both in rayStartParams"),
    (lambda d: _cluster(d).__setitem__("rayVersion", "2.49.0"), "needs rayVersion >= 2.52.0"),
    (lambda d: d["spec"].__setitem__("clusterSelector", {"ray.io/cluster": "x"}), "exactly one of rayClusterSpec"),
])
def test_a_broken_manifest_fails_in_one_line(crds, tmp_path, capsys, change, message):
    broken = _break(tmp_path / "cluster-k8s.yaml", change)
    with pytest.raises(SpecError, match=re.escape(message)):
        kuberay.validate(broken, crds)
    assert main(["validate-cluster", str(broken), "--crds", str(crds)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_the_cli_validates_it_and_sizes_the_paper_profile_on_its_groups(crds, capsys):
    assert main(["validate-cluster", str(MANIFEST), "--crds", str(crds)]) == 0
    out = capsys.readouterr().out
    assert "valid RayJob (head, cpu, gpu-1x, gpu-4x; and the CRDs in" in out
    assert "clip (paper): 2 workers x 4 CPU, 1 GPU: on gpu-4x; up to 4 trials at once" in out
    assert "gan (paper): 1 worker x 1 CPU, 0.25 GPU: on gpu-1x, gpu-4x" in out
    assert "minimax (paper): 1 worker x 1 CPU, 1 cpu_node: on head, cpu" in out
    assert "before applying, replace: REGISTRY/orchestrator:0.1.0" in out


def test_a_manifest_whose_groups_hold_no_paper_clip_trial_is_refused(crds, tmp_path, capsys):
    def no_4x(doc):
        _cluster(doc)["workerGroupSpecs"] = [g for g in _cluster(doc)["workerGroupSpecs"] if g["groupName"] != "gpu-4x"]

    assert main(["validate-cluster", str(_break(tmp_path / "k.yaml", no_4x)), "--crds", str(crds)]) == 2
    captured = capsys.readouterr()
    assert "clip (paper): 2 workers x 4 CPU, 1 GPU: no group holds one trial's workers on one pod" in captured.out
    assert "a study of the paper profile fits no group" in captured.err


def test_the_cli_on_the_head_sizes_trials_from_the_manifest(monkeypatch):
    """The head's ORCHESTRATOR_CLUSTER_CONFIG names the manifest: the CLI reads its groups as node types,
    packs a paper CLIP trial's 2 workers on one 4-GPU pod and runs as many at once as fit whole."""
    head_env = {e["name"]: e["value"] for e in _cluster(job())["headGroupSpec"]["template"]["spec"]["containers"][0]["env"]}
    assert head_env[capacity.CONFIG_ENV].endswith("/" + MANIFEST.name)
    monkeypatch.setenv(capacity.CONFIG_ENV, str(MANIFEST))
    types, max_workers = capacity.cluster_node_types(joined=True)
    assert {t.name: t.resources for t in types}["head"] == {"CPU": 8, "train_driver": 64, "cpu_node": 8}
    assert {t.name: t.resources for t in types}["gpu-4x"] == {"CPU": 44, "GPU": 4} and max_workers == 12
    paper = {exp.study: exp.scaling for exp in resolve("all", "paper", [], say=lambda _: None)}
    assert capacity.placement_strategy(paper["clip"], joined=True) == "STRICT_PACK"
    assert capacity.max_concurrent(paper["clip"], joined=True, say=print) == 4
    need, at_once = capacity.single_process_resources(paper["minimax"], joined=True)
    assert need == {"CPU": 1, "cpu_node": 1} and at_once == 8 + 4 * 4  # the head and the CPU group, never a GPU pod


def test_the_image_is_rays_own_with_the_lock_and_the_weights_baked_in():
    dockerfile = (ROOT / "Dockerfile").read_text()
    base = re.search(r"^FROM (\S+)", dockerfile, re.M).group(1)
    ray_pin = re.search(r"^ray(?:\[[^\]]*\])?==(\S+)", (ROOT / "cluster-requirements.txt").read_text(), re.M).group(1)
    assert base == f"rayproject/ray:{ray_pin}-py311-gpu"  # the image's Ray is the lock's...
    assert _cluster(job())["rayVersion"] == ray_pin  # ...and the one the operator is told
    assert "pip install --no-cache-dir -r cluster-requirements.txt" in dockerfile  # as cluster.yaml installs it
    assert "--no-deps" in dockerfile and "orchestrator.clusters.prefetch --profile paper" in dockerfile
    images = {c["image"] for _, g in kuberay._groups(job()) for c in g["template"]["spec"]["containers"]}
    assert len(images) == 1  # one image everywhere
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".venv", "results", "cluster-token"} <= set(ignored)


def test_prefetch_covers_every_encoder_pair_of_the_profile():
    from orchestrator.clusters.prefetch import encoder_names

    assert encoder_names("paper") == [("resnet50", "distilbert-base-uncased"), ("resnet18", "bert-base-uncased"),
                                      ("resnet34", "roberta-base")]
    assert len(encoder_names("local")) == 3  # the offline pairs (the seeds share them)
