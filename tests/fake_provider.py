"""Ray's fake multi-node provider, plus launches that fail as a cloud's do: a node type whose
node_config has `launch_error` raises it on every launch (e.g. AWS's InsufficientInstanceCapacity).
Loaded by the fake cluster's autoscaler as an external provider (`provider.module`)."""

from ray.autoscaler._private.fake_multi_node.node_provider import FakeMultiNodeProvider


class FailingFakeProvider(FakeMultiNodeProvider):
    def create_node_with_resources_and_labels(self, node_config, tags, count, resources, labels):
        if node_config.get("launch_error"):
            raise RuntimeError(node_config["launch_error"])
        return super().create_node_with_resources_and_labels(node_config, tags, count, resources, labels)
