"""Prefill/decode disaggregation: KV hand-off from a prefill node to a decode node.

A prefill node holds each prompt's KV under its `bootstrap_room` (store.py) and serves it on
its bootstrap listener (bootstrap.py) as one binary payload (payload.py); a decode node pulls
it (puller.py) and decodes from there.
"""
