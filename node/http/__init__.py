"""What every HTTP surface of the node shares (the API, the fault admin routes, the PD
bootstrap listener, `pdfleet faultproxy`): error replies, request bodies, the admin token."""
