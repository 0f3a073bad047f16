"""Offline validation of a `ray up` cluster config: the same schema and preparation steps `ray up`
runs before it touches the cloud (no credentials, no network), plus this project's own rules."""

from __future__ import annotations

import copy
import json
import logging
import os
from pathlib import Path

from orchestrator.spec import SpecError


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
    ports = [(p.get("FromPort"), p.get("ToPort"))
             for p in raw.get("provider", {}).get("security_group", {}).get("IpPermissions", [])]
    if any(port != (22, 22) for port in ports):
        raise SpecError(f"{path}: provider.security_group opens {ports}: only SSH (22) may face the internet")
    head = " ".join(raw.get("head_start_ray_commands") or [])
    if "--head" in head and "--dashboard-host=127.0.0.1" not in head:
        raise SpecError(f"{path}: the head's `ray start` must bind the dashboard to 127.0.0.1 (--dashboard-host=127.0.0.1)")
    return raw
