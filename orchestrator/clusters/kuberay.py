"""KubeRay manifests (cluster-k8s.yaml: a RayJob and the volume it mounts), checked offline.

No Kubernetes cluster is needed: `validate` checks the rules the KubeRay operator enforces in code
(ray-operator/controllers/ray/utils/validation.go, v1.7.0), and, given KubeRay's CRDs, the manifest
against their OpenAPI schemas with unknown fields as errors (what strict field validation does).
`node_types` turns the RayCluster's groups into the node types capacity.py sizes trials from, so a
run on KubeRay knows what its cluster can grow to, as on `ray up` (ORCHESTRATOR_CLUSTER_CONFIG).
"""

from __future__ import annotations

import copy
import functools
import os
import re
from pathlib import Path

from orchestrator.studies.spec import SpecError

KINDS = ("RayJob", "RayCluster")
RAY_START_RESOURCES = ("num-cpus", "num-gpus", "memory", "resources")  # also settable as the group's `resources`
AUTH_MIN_RAY = (2, 52, 0)  # authOptions.mode token needs Ray >= 2.52.0 (validation.go)


def load(path: str | os.PathLike) -> list[dict]:
    """Every document of a (multi-document) YAML file; SpecError with one line when unreadable."""
    import yaml

    path = Path(path)
    try:
        return [d for d in yaml.safe_load_all(path.read_text()) if d]
    except OSError as exc:
        raise SpecError(f"{path}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise SpecError(f"{path}: not valid YAML: {str(exc).splitlines()[0]}") from None


def ray_resource(docs: list[dict]) -> dict | None:
    """The RayJob or RayCluster among `docs` (None: not a KubeRay manifest)."""
    return next((d for d in docs if isinstance(d, dict) and d.get("kind") in KINDS), None)


def cluster_spec(doc: dict) -> dict:
    spec = doc.get("spec") or {}
    return (spec.get("rayClusterSpec") or {}) if doc.get("kind") == "RayJob" else spec


def _groups(doc: dict) -> list[tuple[str, dict]]:
    spec = cluster_spec(doc)
    head = [("head", spec.get("headGroupSpec") or {})]
    return head + [(g.get("groupName", f"worker[{i}]"), g) for i, g in enumerate(spec.get("workerGroupSpecs") or [])]


def rules(doc: dict) -> list[str]:
    """What the KubeRay operator would reject, one line each (validation.go's rules that the CRD
    schema does not express)."""
    problems, spec, cluster = [], doc.get("spec") or {}, cluster_spec(doc)
    if doc.get("kind") == "RayJob":
        if bool(spec.get("rayClusterSpec")) == bool(spec.get("clusterSelector")):
            problems.append("spec: exactly one of rayClusterSpec and clusterSelector")
        if spec.get("ttlSecondsAfterFinished") and not spec.get("shutdownAfterJobFinishes"):
            problems.append("spec.ttlSecondsAfterFinished needs shutdownAfterJobFinishes: true")
        if not str(spec.get("entrypoint", "")).strip():
            problems.append("spec.entrypoint: empty")
    if (cluster.get("authOptions") or {}).get("mode") == "token" and _version(cluster.get("rayVersion")) < AUTH_MIN_RAY:
        problems.append(f"authOptions.mode token needs rayVersion >= 2.52.0, got {cluster.get('rayVersion')!r}")
    autoscaler_v2 = cluster.get("enableInTreeAutoscaling") and (cluster.get("autoscalerOptions") or {}).get("version") == "v2"
    for name, group in _groups(doc):
        pod = (group.get("template") or {}).get("spec") or {}
        if autoscaler_v2 and pod.get("restartPolicy") not in (None, "", "Never"):
            problems.append(f"{name}: autoscaler v2 needs restartPolicy Never or unset, got {pod['restartPolicy']}")
        both = [k for k in RAY_START_RESOURCES if k in (group.get("rayStartParams") or {})]
        if both and group.get("resources"):
            problems.append(f"{name}: resources set both in rayStartParams ({', '.join(both)}) and the group's resources")
        if name != "head":
            low, high, now = group.get("minReplicas", 0), group.get("maxReplicas", 2**31 - 1), group.get("replicas", 0)
            if low > high:
                problems.append(f"{name}: minReplicas {low} > maxReplicas {high}")
            elif not low <= now <= high:
                problems.append(f"{name}: replicas {now} outside [minReplicas {low}, maxReplicas {high}]")
        if not pod.get("containers"):
            problems.append(f"{name}: no containers")
    return problems


def _version(text) -> tuple[int, ...]:
    parts = re.findall(r"\d+", str(text or ""))[:3]
    return tuple(int(p) for p in parts) + (0,) * (3 - len(parts)) if parts else (0, 0, 0)


def quantity(value) -> float:
    """A Kubernetes quantity as a number: "8" -> 8, "500m" -> 0.5, "32Gi" -> 32 * 2**30."""
    text = str(value).strip()
    units = {"m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
    for suffix in sorted(units, key=len, reverse=True):
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * units[suffix]
    return float(text)


def _ray_resources(group: dict) -> dict[str, float]:
    """What Ray sees on one pod of a group: CPUs and GPUs from the Ray container's limits (else
    requests), as KubeRay passes them to `ray start`, plus the group's custom resources."""
    containers = ((group.get("template") or {}).get("spec") or {}).get("containers") or [{}]
    box = containers[0].get("resources") or {}
    amounts = {**(box.get("requests") or {}), **(box.get("limits") or {})}
    out = {}
    if "cpu" in amounts:
        out["CPU"] = quantity(amounts["cpu"])
    if "nvidia.com/gpu" in amounts:
        out["GPU"] = quantity(amounts["nvidia.com/gpu"])
    out.update({k: float(v) for k, v in (group.get("resources") or {}).items()})
    return out


def node_types(doc: dict):
    """(capacity.NodeType per group, the sum of the worker groups' maxReplicas)."""
    from orchestrator.engine.capacity import NodeType

    types = [NodeType(name, _ray_resources(group), 1 if name == "head" else int(group.get("maxReplicas", 0)),
                      head=name == "head")
             for name, group in _groups(doc)]
    return types, sum(t.max_workers for t in types if not t.head)


def placeholders(text: str) -> list[str]:
    """The values left to replace (REGISTRY/..., REPLACE_ME...), each once."""
    return list(dict.fromkeys(re.findall(r"\bREGISTRY/\S+|\bREPLACE_ME\w*", text)))


def holds(types: list, max_workers: int, scaling) -> str:
    """Whether these groups can hold one trial of `scaling`, on which, and how many at once (the same
    arithmetic capacity.py sizes trials with; single-process CPU trials need `cpu_node`)."""
    from orchestrator.engine.capacity import CPU_NODE_RESOURCE, max_worker_slots, worker_resources, worker_slots

    need = worker_resources(scaling)
    workers = scaling.num_workers
    if not scaling.use_gpu and workers == 1 and any(t.resources.get(CPU_NODE_RESOURCE) for t in types):
        need[CPU_NODE_RESOURCE] = scaling.cpus_per_worker
    whole = [t.name for t in types if t.max_workers > 0 and worker_slots(t.resources, need) >= workers]
    text = f"{workers} worker{'s' * (workers > 1)} x " + ", ".join(f"{v:g} {k}" for k, v in need.items())
    if not whole:
        return f"{text}: no group holds one trial's workers on one pod"
    at_once = max_worker_slots(types, max_workers, need, group=workers) // workers
    return f"{text}: on {', '.join(whole)}; up to {at_once} trial{'s' * (at_once != 1)} at once"


def validate(path: str | os.PathLike, crd_dir: str | os.PathLike | None = None) -> dict:
    """The RayJob/RayCluster of the manifest, or SpecError with one line: the operator's rules, and
    with `crd_dir` (KubeRay's CRDs: ray.io_rayjobs.yaml, ray.io_rayclusters.yaml) every document of
    those kinds against its schema, unknown fields included."""
    docs = load(path)
    doc = ray_resource(docs)
    if doc is None:
        raise SpecError(f"{path}: no RayJob or RayCluster in it")
    if crd_dir is not None:
        for d in docs:
            if d.get("kind") in KINDS:
                problem = schema_problem(d, crd_dir)
                if problem:
                    raise SpecError(f"{path}: {d['kind']} {problem}")
    problems = rules(doc)
    if problems:
        raise SpecError(f"{path}: {problems[0]}" + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""))
    return doc


def schema_problem(doc: dict, crd_dir: str | os.PathLike) -> str | None:
    """The first place where `doc` breaks its CRD's v1 schema (unknown fields are errors), or None."""
    import jsonschema

    crd_file = Path(crd_dir) / {"RayJob": "ray.io_rayjobs.yaml", "RayCluster": "ray.io_rayclusters.yaml"}[doc["kind"]]
    schema = _crd_schema(str(crd_file.resolve()), str(doc.get("apiVersion", "")).split("/")[-1])
    errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(doc), key=lambda e: list(e.absolute_path))
    if not errors:
        return None
    where = "/".join(map(str, errors[0].absolute_path)) or "top level"
    return f"{where}: {errors[0].message}"


@functools.lru_cache(maxsize=4)
def _crd_schema(crd_file: str, version: str) -> dict:
    """A CRD version's schema, strict (CRDs are ~1 MB of YAML: parsed once per process, with libyaml
    where PyYAML has it)."""
    import yaml

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    crd = yaml.load(Path(crd_file).read_text(), Loader=loader)  # noqa: S506 (a safe loader)
    found = next(v for v in crd["spec"]["versions"] if v["name"] == version)
    schema = strict(found["schema"]["openAPIV3Schema"])
    # the API server's own fields (apiVersion, kind, metadata) are not the CRD's to describe in full
    schema["properties"]["metadata"] = {"type": "object"}
    return schema


def strict(schema: dict) -> dict:
    """An OpenAPI v3 schema as JSON Schema that refuses undeclared fields, as strict field validation
    does (objects with declared properties and no x-kubernetes-preserve-unknown-fields)."""
    schema = copy.deepcopy(schema)

    def walk(node):
        if isinstance(node, dict):
            if (node.get("type") == "object" and "properties" in node and "additionalProperties" not in node
                    and not node.get("x-kubernetes-preserve-unknown-fields")):
                node["additionalProperties"] = False
            if node.get("x-kubernetes-int-or-string"):  # "8" or 8
                node.pop("type", None)
                node.setdefault("anyOf", [{"type": "integer"}, {"type": "string"}])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(schema)
    return schema
