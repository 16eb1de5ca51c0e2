"""The PD generation proxy: place each generation request on a prefill/decode
pair (or a mixed node alone), add SGLang's bootstrap fields, call both nodes at once and
answer with the decode node's reply — relayed chunk by chunk when it streams.

- `bootstrap`: the fields SGLang's PD hand-off needs, shaped like sgl-router's.
- `placement`: which nodes serve a request, and why none can.
- `stream`: the decode node's SSE reply, relayed without buffering.
- `errors`: what the client is told when a request cannot be served.
- `proxy`: one request end to end, with safe retries on another pair.
"""
