"""Ray's fake multi-node provider, plus launches that fail as a cloud's do: a node type whose
node_config has `launch_error` raises it on every launch (e.g. AWS's InsufficientInstanceCapacity).
Loaded by the fake cluster's autoscaler as an external provider (`provider.module`).

Its nodes also get their node type as the `ray.io/node-group` label: on a real cluster each node's
`ray start` runs with RAY_NODE_TYPE_NAME set (autoscaler v2's ray_installer), from which Ray makes
that label; the fake provider builds its nodes inside the head's autoscaler process, whose own
RAY_NODE_TYPE_NAME (the head's) Ray would read instead."""

from ray._raylet import RAY_NODE_GROUP_KEY
from ray.autoscaler._private.fake_multi_node.node_provider import FakeMultiNodeProvider
from ray.autoscaler.tags import TAG_RAY_USER_NODE_TYPE


class FailingFakeProvider(FakeMultiNodeProvider):
    def create_node_with_resources_and_labels(self, node_config, tags, count, resources, labels):
        if node_config.get("launch_error"):
            raise RuntimeError(node_config["launch_error"])
        labels = {**(labels or {}), RAY_NODE_GROUP_KEY: tags[TAG_RAY_USER_NODE_TYPE]}
        return super().create_node_with_resources_and_labels(node_config, tags, count, resources, labels)
