"""Studies as typed specs: the workloads the orchestrator knows (registry.py), the studies and their
profiles (experiments.py), an experiment's trials, sweeps and scaling (spec.py, sweeps.py), and what
the command line's names and overrides resolve to, checked before Ray starts (resolve.py).
"""

from orchestrator.studies.experiments import EXPERIMENTS, PROFILES, studies
from orchestrator.studies.registry import WORKLOADS, Workload
from orchestrator.studies.resolve import preflight, resolve
from orchestrator.studies.spec import Experiment, Scaling, SpecError, trial_key

__all__ = ["EXPERIMENTS", "PROFILES", "WORKLOADS", "Experiment", "Scaling", "SpecError", "Workload", "preflight",
           "resolve", "studies", "trial_key"]
