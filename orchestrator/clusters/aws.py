"""Offline validation of a `ray up` cluster config: the same schema and preparation steps `ray up`
runs before it touches the cloud (no credentials, no network), plus this project's own rules."""

from __future__ import annotations

import copy
import json
import logging
import os
from pathlib import Path

from orchestrator.studies.spec import SpecError


def validate_cluster(path: str | os.PathLike) -> dict:
    """The parsed config, or SpecError with one line saying what is wrong."""
    import jsonschema
    import ray.autoscaler
    import yaml
    from ray.autoscaler._private.util import prepare_config, validate_config

    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise SpecError(f"{path}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise SpecError(f"{path}: not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(raw, dict):
        raise SpecError(f"{path}: expected a mapping of cluster settings")
    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    try:
        jsonschema.validate(raw, schema)
    except jsonschema.ValidationError as exc:
        where = "/".join(map(str, exc.absolute_path)) or "top level"
        raise SpecError(f"{path}: {where}: {exc.message}") from None
    quiet = logging.getLogger("ray.autoscaler")  # prepare_config logs what it fills in at INFO
    level = quiet.level
    quiet.setLevel(logging.WARNING)
    try:
        validate_config(prepare_config(copy.deepcopy(raw)))
    except (ValueError, KeyError, jsonschema.ValidationError) as exc:
        raise SpecError(f"{path}: {str(exc).splitlines()[0]}") from None
    finally:
        quiet.setLevel(level)
    for section in ("setup_commands", "head_start_ray_commands", "worker_start_ray_commands"):
        for item in raw.get(section) or []:
            if not isinstance(item, str):  # an unquoted ': ' turned a command into a mapping
                raise SpecError(f"{path}: {section}: {item!r} is not a command string (quote it or use >-)")
    _project_rules(path, raw)
    return raw


LOCK = "cluster-requirements.txt"  # every package pinned and hashed, torch built for the AMI's driver (docs/clusters.md)


def _project_rules(path: Path, raw: dict) -> None:
    """What this project promises about its cluster, checked where Ray honours it."""
    provider, types = raw.get("provider", {}), raw.get("available_node_types", {})
    if provider.get("security_group"):  # Ray's AWS launcher adds SSH from 0.0.0.0/0 to groups it creates
        raise SpecError(f"{path}: provider.security_group: Ray's AWS launcher opens SSH (22) to 0.0.0.0/0 on a group it "
                        "creates, whatever IpPermissions say; create your own group and set SecurityGroupIds per node type")
    if provider.get("type") == "aws":
        for name, spec in types.items():
            if not (spec.get("node_config") or {}).get("SecurityGroupIds"):
                raise SpecError(f"{path}: {name}: node_config.SecurityGroupIds is missing: without it Ray creates a group "
                                "with SSH open to 0.0.0.0/0")
    head_start = " ".join(raw.get("head_start_ray_commands") or [])
    if "--head" in head_start and "--dashboard-host=127.0.0.1" not in head_start:
        raise SpecError(f"{path}: the head's `ray start` must bind the dashboard to 127.0.0.1 (--dashboard-host=127.0.0.1)")
    starts = {"head_start_ray_commands": head_start, "worker_start_ray_commands": " ".join(raw.get("worker_start_ray_commands") or [])}
    for section, text in starts.items():
        if "ray start" in text and "RAY_AUTH_MODE=token" not in text:
            raise SpecError(f"{path}: {section}: start Ray with RAY_AUTH_MODE=token (token auth on every node)")
    if "ray start" in head_start and not any("get-auth-token --generate" in c for c in raw.get("head_setup_commands") or []):
        raise SpecError(f"{path}: head_setup_commands must create the token (ray get-auth-token --generate): "
                        "`ray start --head` enables auth only when a token exists")
    if types and not any(str(p).endswith(".ray/auth_token") for p in raw.get("cluster_synced_files") or []):
        raise SpecError(f"{path}: cluster_synced_files must carry the head's ~/.ray/auth_token to the workers")
    installs = [c for c in raw.get("setup_commands") or [] if "pip install" in c and " -e " in c]  # the project's
    if installs and not all(f"-r {LOCK}" in c and "--no-deps" in c for c in installs):
        raise SpecError(f"{path}: setup_commands must install exactly the lock (`pip install -r {LOCK}`), then the "
                        "project with `--no-deps` (nothing else resolved)")
    if any((t.get("resources") or {}).get("GPU") for t in types.values()) and not any(
            "cuda.is_available" in c for c in raw.get("setup_commands") or []):
        raise SpecError(f"{path}: setup_commands need a check that torch can use a GPU node's GPU (fail setup loudly)")
    for name, spec in types.items():
        if "worker_setup_commands" in spec:  # Ray: a node type's own list replaces the global setup commands
            raise SpecError(f"{path}: {name}: worker_setup_commands of a node type replace the global setup_commands "
                            "(no EFS mount, no install on those nodes); put node checks in setup_commands")
        if name != raw.get("head_node_type") and (spec.get("resources") or {}).get("train_driver"):
            raise SpecError(f"{path}: {name}: the train_driver resource belongs on the head only (drivers on a safe node)")
    if types and not any(not (t.get("resources") or {}).get("GPU") for n, t in types.items() if n != raw.get("head_node_type")):
        raise SpecError(f"{path}: no CPU worker type: single-process trials would make the autoscaler start GPU nodes")
    for name, spec in types.items():  # single-process trials ask for cpu_node: only CPU-only nodes may have it
        res = spec.get("resources") or {}
        if res.get("GPU") and res.get("cpu_node"):
            raise SpecError(f"{path}: {name}: a GPU type must not declare cpu_node (single-process trials would start it)")
        if not res.get("GPU") and res.get("cpu_node") != res.get("CPU"):
            raise SpecError(f"{path}: {name}: declare cpu_node equal to its CPUs ({res.get('CPU')}): single-process "
                            "trials ask for it, so the autoscaler never starts a GPU node for them")
    if "ray start" in head_start and '"cpu_node"' not in head_start:
        raise SpecError(f"{path}: head_start_ray_commands: give the head's `ray start --resources` its cpu_node")


def placeholders(raw: dict) -> list[str]:
    """Values the user must replace before `ray up` (the shipped file validates with them in place)."""
    import re

    return sorted(set(re.findall(r"\b(?:sg|fs)-REPLACE_ME\b", json.dumps(raw))))
