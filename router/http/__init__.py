"""The router's HTTP client for calling nodes, one concern per module:

- `errors`: the transport failures, whose class is their kind, and the one mapping from the
  OS's and asyncio's errors to them.
- `request`: a URL's origin and the request's bytes.
- `reply`: what a call gives back: `NodeReply` (read whole, capped) or `NodeStream`.
- `connection`: one HTTP/1.1 connection, its state machine and its parser callbacks.
- `pool`: `NodeClient`, the keep-alive connections per node.
- `client`: `start_call` and `call_node`, the calls every caller makes (the retry policy
  lives there; the retry itself in `pdfleet.retry`).
"""
