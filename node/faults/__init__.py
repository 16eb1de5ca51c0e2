"""Failure injection: fault rules (`rules`), the live rule set (`rules.FaultSet`), the ASGI
middleware that applies them to requests (`inject`) and the `/_admin/faults` routes (`admin`).

Nothing here imports torch: `pdfleet faultproxy` uses the same package in front of any node.
"""
