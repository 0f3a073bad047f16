"""`python -m orchestrator list`: every study, its profiles, and every setting --set accepts, with its
default, the paper profile's value where it differs, and the comment written next to the field."""

from __future__ import annotations

import dataclasses

from orchestrator.studies.experiments import EXPERIMENTS
from orchestrator.studies.registry import WORKLOADS

TRAIN_ONLY = ("num_workers", "max_failures", "sync_bn")  # Scaling fields of Train runs (DDP workers, restarts)
GPU_ONLY = ("use_gpu", "gpus_per_worker")  # Scaling fields of studies whose trials can use a GPU


def field_comments(cls) -> dict[str, str]:
    """{field: the comment on its line} of a dataclass's source: what `list` shows next to each setting
    (the comments are the settings' one documentation, written once where the defaults are)."""
    import inspect
    import io
    import textwrap
    import tokenize

    names, on_line, comments = {f.name for f in dataclasses.fields(cls)}, {}, {}
    source = textwrap.dedent(inspect.getsource(cls))
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.NAME and token.start[1] == 4 and token.string in names:
            on_line.setdefault(token.start[0], token.string)
        elif token.type == tokenize.COMMENT and token.start[0] in on_line:
            comments[on_line[token.start[0]]] = token.string.lstrip("#").strip()
    return comments


def _shown(value) -> str:
    text = ",".join(map(str, value)) if isinstance(value, tuple) else str(value)
    return text if text != "" else "(empty)"


def list_studies() -> int:
    for name, profiles in EXPERIMENTS.items():
        print(f"{name}")
        for profile, exp in profiles.items():
            print(f"  --profile {profile}: {exp.summary}")
        exp, paper = profiles["local"], profiles["paper"]
        hidden = (TRAIN_ONLY if not WORKLOADS[name].distributed else ()) + (GPU_ONLY if not WORKLOADS[name].gpu else ())
        print("  settings (--set FIELD=VALUE; defaults of the local profile):")
        for obj, other in ((exp.config, paper.config), (exp.scaling, paper.scaling)):
            comments = field_comments(type(obj))
            for f in dataclasses.fields(obj):
                comment = comments.get(f.name, "")
                if comment.startswith("test hook") or (obj is exp.scaling and f.name in hidden):
                    continue  # accepted by --set, but not a setting of this study
                value, theirs = getattr(obj, f.name), getattr(other, f.name)
                diff = f"  (paper: {_shown(theirs)})" if theirs != value else ""
                print(f"    {name}.{f.name} = {_shown(value)}{diff}{f'  # {comment}' if comment else ''}")
        if hidden:
            print(f"  ({name}: {', '.join(hidden)} do not apply: its trials are single"
                  f"{' NumPy' if not WORKLOADS[name].gpu else ''} processes)")
    return 0
