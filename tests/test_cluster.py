"""cluster.yaml is checked offline with Ray's own schema and config preparation; broken copies fail."""

from pathlib import Path

import pytest
import yaml

from orchestrator.cli import main
from orchestrator.clusters.aws import validate_cluster
from orchestrator.studies import SpecError

CLUSTER = Path(__file__).resolve().parents[1] / "cluster.yaml"


def test_shipped_cluster_config_is_valid_and_ssh_only(capsys):
    raw = validate_cluster(CLUSTER)
    assert main(["validate-cluster", str(CLUSTER)]) == 0
    assert "valid" in capsys.readouterr().out
    head = raw["available_node_types"][raw["head_node_type"]]
    assert "InstanceMarketOptions" not in head["node_config"]  # the drivers' node is never spot
    assert head["resources"]["train_driver"] > 0
    assert any("MarketType" in t["node_config"].get("InstanceMarketOptions", {})
               for t in raw["available_node_types"].values())
    assert any("pip install" in c and ".[aws]" in c and "-c cluster-constraints.txt" in c for c in raw["setup_commands"])
    assert "security_group" not in raw["provider"]  # Ray would open SSH to 0.0.0.0/0 on a group it creates
    assert all(t["node_config"]["SecurityGroupIds"] for t in raw["available_node_types"].values())
    cpu_types = [n for n, t in raw["available_node_types"].items() if n != raw["head_node_type"] and "GPU" not in t["resources"]]
    assert cpu_types  # single-process trials have CPU nodes to grow into
    pins = (CLUSTER.parent / "cluster-constraints.txt").read_text()
    assert "torch==" in pins and "torchvision==" in pins


def _broken(tmp_path, mutate) -> Path:
    raw = yaml.safe_load(CLUSTER.read_text())
    mutate(raw)
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.parametrize("mutate, message", [
    (lambda r: r.update(head_node_type="no.such.type"), "head_node_type"),
    (lambda r: r.update(max_workrs=3), "max_workrs"),
    (lambda r: r["available_node_types"]["gpu.spot.1x"].update(min_workers="two"), "min_workers"),
    (lambda r: r["available_node_types"]["gpu.spot.1x"].update(min_workers=13), "max_workers"),
    (lambda r: r["provider"].update(security_group={"GroupName": "x", "IpPermissions": [
        {"FromPort": 22, "ToPort": 22, "IpProtocol": "tcp", "IpRanges": [{"CidrIp": "203.0.113.0/24"}]}]}), "0.0.0.0/0"),
    (lambda r: r["available_node_types"]["cpu.spot"]["node_config"].pop("SecurityGroupIds"), "SecurityGroupIds"),
    (lambda r: r.update(head_setup_commands=[]), "get-auth-token --generate"),
    (lambda r: r.update(cluster_synced_files=[]), "auth_token"),
    (lambda r: r["worker_start_ray_commands"].__setitem__(1, "ray start --address=$RAY_HEAD_IP:6379"), "RAY_AUTH_MODE=token"),
    (lambda r: r["setup_commands"].__setitem__(2, 'cd ~/orchestrator && pip install -e ".[aws]"'), "cluster-constraints"),
    (lambda r: r["setup_commands"].pop(3), "torch can use a GPU"),
    (lambda r: r["available_node_types"]["gpu.spot.1x"].update(worker_setup_commands=["echo hi"]), "replace the global"),
    (lambda r: r["available_node_types"].pop("cpu.spot"), "no CPU worker type"),
    (lambda r: r["available_node_types"]["cpu.spot"]["resources"].pop("cpu_node"), "cpu_node equal to its CPUs"),
    (lambda r: r["available_node_types"]["gpu.spot.1x"]["resources"].update(cpu_node=4), "must not declare cpu_node"),
    (lambda r: r["head_start_ray_commands"].__setitem__(1, "RAY_AUTH_MODE=token ray start --head --dashboard-host=0.0.0.0"), "127.0.0.1"),
    (lambda r: r["setup_commands"].append({"ray start --resources='{\"a\"": "8}'"}), "not of type 'string'"),
])
def test_broken_copies_are_rejected_with_one_line(tmp_path, capsys, mutate, message):
    path = _broken(tmp_path, mutate)
    with pytest.raises(SpecError, match=message):
        validate_cluster(path)
    assert main(["validate-cluster", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and err.count("\n") == 1


def test_unparsable_and_missing_files(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("cluster_name: [unclosed\n")
    assert main(["validate-cluster", str(bad)]) == 2
    assert main(["validate-cluster", str(tmp_path / "missing.yaml")]) == 2
    assert capsys.readouterr().err.count("\n") == 2
