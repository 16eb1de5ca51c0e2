"""Cluster control: one memory operation (release, resume, flush) on every target node.

A route turns the HTTP request into a `ControlRequest` (request.py) and hands it to the one
`ControlPlane` (plane.py), which takes the control lock (lock.py: one operation at a time,
across the router's worker processes too), fans the operation out (fanout.py; each node's
engine answers with a `NodeOutcome`, outcome.py), builds the `ControlReport` (report.py: the
reply's shape, defined once) and tells its observers.
"""
