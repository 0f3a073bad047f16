"""The clusters a run goes to beyond one machine, checked offline: `ray up` configs (aws.py)."""
