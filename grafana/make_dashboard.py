"""Writes grafana/orchestrator.json, the Grafana dashboard of the studies' live metrics
(orchestrator/engine/metrics.py): `python grafana/make_dashboard.py`. A row per study: progress,
losses and metrics over time per trial, throughput and GPU memory, and the run's trial states,
waits, preemptions and restarts. Ray exports application metrics with the prefix `ray_`.

Shaped like Ray's own dashboards (ray/dashboard/modules/metrics/dashboards/): a hidden `datasource`
variable of type prometheus (Ray provisions its Prometheus as the default one), and variables for
the run and the trial. tests/test_metrics.py checks that every query names only metrics a real run
exports.
"""

import json
from pathlib import Path

OUT = Path(__file__).with_name("orchestrator.json")
SEL = 'study="{study}", run_id=~"$run_id", trial=~"$trial"'
STUDY_SEL = 'study="{study}", run_id=~"$run_id"'
STUDIES = {  # study -> (title, its metrics' names as the sink records them)
    "gan": ("GAN (FashionMNIST)", "fid|val_fid"),
    "clip": ("CLIP (Flickr8k)", "t2i_r10|val_rsum"),
    "minimax": ("Minimax", "reached"),  # per trial: its lanes that reached the saddle
}


def panel(title: str, exprs: list[tuple[str, str]], grid: dict, unit: str = "short", description: str = "") -> dict:
    return {
        "type": "timeseries", "title": title, "description": description, "datasource": "${datasource}",
        "gridPos": grid, "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom"}, "tooltip": {"mode": "multi"}},
        "targets": [{"expr": expr, "legendFormat": legend, "refId": chr(ord("A") + i), "datasource": "${datasource}"}
                    for i, (expr, legend) in enumerate(exprs)],
    }


def study_panels(study: str, metrics: str, y: int, ids: iter) -> list[dict]:
    sel, study_sel = SEL.format(study=study), STUDY_SEL.format(study=study)
    per_trial = [
        ("Progress (epochs or steps done / total)",
         [(f"max by (trial) (ray_orchestrator_trial_step{{{sel}}}) / max by (trial) "
           f"(ray_orchestrator_trial_steps_total{{{sel}}})", "{{trial}}")], "percentunit"),
        ("Losses per epoch", [(f"max by (trial, loss) (ray_orchestrator_trial_loss{{{sel}}})", "{{trial}} {{loss}}")],
         "short"),
        ("Study metric", [(f'max by (trial, metric) (ray_orchestrator_trial_metric{{{sel}, metric=~"{metrics}"}})',
                           "{{trial}} {{metric}}")], "short"),
        ("Throughput and GPU memory", [(f"max by (trial) (ray_orchestrator_trial_images_per_second{{{sel}}})",
                                        "{{trial}} images/s"),
                                       (f"max by (trial) (ray_orchestrator_trial_gpu_memory_gb{{{sel}}})",
                                        "{{trial}} GPU GiB")], "short"),
        ("Trials by state", [(f"max by (state) (ray_orchestrator_study_trials{{{study_sel}}})", "{{state}}")], "short"),
        ("Waits, preemptions, restarts", [(f"max (ray_orchestrator_study_wait_seconds{{{study_sel}}})", "waited for nodes (s)"),
                                          (f"max by (trial) (ray_orchestrator_trial_preemptions{{{sel}}})",
                                           "{{trial}} preemptions"),
                                          (f"max by (trial) (ray_orchestrator_trial_restarts{{{sel}}})",
                                           "{{trial}} restarts")], "short"),
    ]
    panels = [{"type": "row", "title": STUDIES[study][0], "collapsed": False, "id": next(ids),
               "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}, "panels": []}]
    for i, (title, exprs, unit) in enumerate(per_trial):
        grid = {"h": 8, "w": 8, "x": 8 * (i % 3), "y": y + 1 + 8 * (i // 3)}
        panels.append({**panel(title, exprs, grid, unit), "id": next(ids)})
    return panels


def dashboard() -> dict:
    ids, panels, y = iter(range(1, 1000)), [], 0
    for study, (_, metrics) in STUDIES.items():
        panels += study_panels(study, metrics, y, ids)
        y += 17

    def variable(name: str, query: str, label: str, multi: bool) -> dict:
        """A query variable; single-select ones start on the first value (sort 2: names descending, so the
        latest run id, YYYYMMDD-HHMMSS-xxxx, comes first)."""
        return {"name": name, "label": label, "type": "query", "datasource": "${datasource}", "refresh": 2,
                "query": {"query": query, "refId": f"{name}-query"}, "definition": query, "includeAll": multi,
                "multi": multi, "sort": 2, **({"allValue": ".*", "current": {"selected": True, "text": ["All"],
                                                                              "value": ["$__all"]}} if multi else {})}

    return {
        "title": "Orchestrator studies", "uid": "orchestratorStudies", "version": 1, "schemaVersion": 27,
        "editable": True, "graphTooltip": 1, "refresh": "10s", "time": {"from": "now-6h", "to": "now"},
        "annotations": {"list": []}, "panels": panels,
        "templating": {"list": [
            {"name": "datasource", "type": "datasource", "query": "prometheus", "hide": 2, "refresh": 1,
             "includeAll": False, "multi": False, "current": {"selected": False}},
            variable("run_id", "label_values(ray_orchestrator_study_trials, run_id)", "Run", multi=False),
            variable("trial", 'label_values(ray_orchestrator_trial_step{run_id=~"$run_id"}, trial)', "Trial", multi=True),
        ]},
    }


if __name__ == "__main__":
    OUT.write_text(json.dumps(dashboard(), indent=1) + "\n")
    print(f"wrote {OUT}")
