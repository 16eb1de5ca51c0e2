"""Nodes found at run time rather than listed in the config: Kubernetes pods by label
(kubernetes.py: the list/watch loop; pods.py: which pod is which node; membership.py: how a
found node joins and leaves the fleet; selectors.py: label selectors)."""
