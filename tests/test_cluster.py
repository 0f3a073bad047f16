"""cluster.yaml is checked offline with Ray's own schema and config preparation; broken copies fail."""

from pathlib import Path

import pytest
import yaml

from orchestrator.cli import main
from orchestrator.cluster import validate_cluster
from orchestrator.spec import SpecError

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
    assert any("pip install" in c and ".[aws]" in c for c in raw["setup_commands"])


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
    (lambda r: r["available_node_types"]["gpu.spot.1x"].update(min_workers=9), "max_workers"),
    (lambda r: r["provider"]["security_group"]["IpPermissions"].append(
        {"FromPort": 8265, "ToPort": 8265, "IpProtocol": "tcp", "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}), "only SSH"),
    (lambda r: r["head_start_ray_commands"].__setitem__(1, "ray start --head --dashboard-host=0.0.0.0"), "127.0.0.1"),
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
