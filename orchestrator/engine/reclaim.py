"""Give back what ended Train trials leave behind (driver side, Ray core).

A Train trial is a Tune function trial that drives a TorchTrainer: its Train controller (an actor the
trial owns) creates the placement group of the DDP workers. When Tune ends such a trial early (ASHA,
PBT's exploit, a stop of the run), it kills the trial's actor; the controller dies with it, but a
placement group lives as long as its job unless removed, so its CPUs/GPUs stay reserved and the next
trial's workers may never be placed. Train V2 starts a detached `PlacementGroupCleaner` per run to
remove it, which asks the State API (the dashboard) whether the controller lives: without a
dashboard it never learns, never removes anything, and never exits (Ray issue 65881 asks for
placement groups that share their creator's lifetime).

So the driver does it, from the GCS's own tables (no dashboard needed): a placement group of this job
whose creating actor is dead is a leak by definition (nothing can use it: the workers placed in it
were owned by that actor and died with it). Placement groups the driver itself created (Tune's
per-trial groups) have no creating actor and are never touched. (Train's cleaner is left out of our
Train runs: actors.train_driver; should the driver itself die, its job ends and Ray removes the job's
placement groups of dead creators on its own.)
"""

from __future__ import annotations

from dataclasses import dataclass

@dataclass(frozen=True)
class Released:
    groups: list[str]  # placement group ids removed
    resources: dict[str, float]  # what they held, summed (e.g. {"CPU": 2.0})

    def __bool__(self) -> bool:
        return bool(self.groups)

    def describe(self) -> str:
        held = ", ".join(f"{v:g} {k}" for k, v in sorted(self.resources.items())) or "nothing"
        return f"released {len(self.groups)} placement group{'s' * (len(self.groups) != 1)} of ended trials ({held})"


def group_table() -> list:
    """Every placement group the GCS knows, as its protobuf (with creator fields that
    `ray.util.placement_group_table` leaves out)."""
    from ray._private.state import state
    from ray.core.generated import gcs_pb2

    accessor = state._connect_and_get_accessor()
    return [gcs_pb2.PlacementGroupTableData.FromString(raw) for raw in accessor.get_placement_group_table()]


def orphaned_groups(groups: list, job_id: str) -> list:
    """This job's placement groups, not removed, whose creating actor (not the driver) is dead."""
    from ray.core.generated import gcs_pb2

    nil = b"\xff" * 16  # an id's unique part when there is no creating actor (the driver made it)
    return [g for g in groups
            if g.state != gcs_pb2.PlacementGroupTableData.REMOVED and not g.is_detached
            and g.creator_job_id.hex() == job_id and g.creator_actor_dead
            and g.creator_actor_id and not g.creator_actor_id.startswith(nil)]


def release_orphans(groups: list | None = None) -> Released:
    """Remove this job's orphaned placement groups; what was released."""
    import ray
    from ray.util.placement_group import PlacementGroup, remove_placement_group

    if not ray.is_initialized():  # nothing of this process's to release
        return Released([], {})
    job_id = ray.get_runtime_context().get_job_id()
    orphans = orphaned_groups(group_table() if groups is None else groups, job_id)
    resources: dict[str, float] = {}
    removed = []
    for group in orphans:
        try:
            remove_placement_group(PlacementGroup(ray.PlacementGroupID(group.placement_group_id)))
        except Exception:  # removed meanwhile (by Train's own cleaner, say)
            continue
        removed.append(group.placement_group_id.hex())
        for bundle in group.bundles:
            for name, amount in bundle.unit_resources.items():
                resources[name] = resources.get(name, 0.0) + amount
    return Released(removed, resources)
