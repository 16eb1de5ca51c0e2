"""A request as bytes on the wire: where a URL goes, and the HTTP/1.1 request for it."""

from __future__ import annotations

from dataclasses import dataclass

import httptools

from router.http.errors import TransportError

Origin = tuple[str, str, int]  # scheme, host, port: a pool's key


@dataclass(frozen=True, slots=True)
class Target:
    """Where a URL's request goes, parsed once per distinct URL."""

    origin: Origin
    head: bytes  # b"<path> HTTP/1.1\r\nHost: <host:port>\r\n"


def parse_target(url: str) -> Target:
    parsed = httptools.parse_url(url.encode())
    scheme = (parsed.schema or b"").decode()
    if scheme not in ("http", "https") or not parsed.host:
        raise TransportError(f"InvalidURL: {url!r} is not an http(s) URL")
    host = parsed.host.decode().strip("[]")
    port = parsed.port or (443 if scheme == "https" else 80)
    path = parsed.path or b"/"
    if parsed.query:
        path += b"?" + parsed.query
    authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    head = path + b" HTTP/1.1\r\nHost: " + authority.encode() + b"\r\n"
    return Target((scheme, host, port), head)


def request_bytes(
    method: str, target: Target, body: bytes | None, headers: dict[str, str] | None
) -> bytes:
    parts = [method.encode(), b" ", target.head]
    if headers:
        for name, value in headers.items():
            if "\r" in value or "\n" in value or "\r" in name or "\n" in name:
                raise TransportError(f"InvalidHeader: {name!r} holds a line break")
            parts.append(f"{name}: {value}\r\n".encode("latin-1", errors="replace"))
    if body is not None:
        parts.append(b"Content-Length: %d\r\n\r\n" % len(body))
        parts.append(body)
    elif method in ("POST", "PUT", "PATCH"):
        parts.append(b"Content-Length: 0\r\n\r\n")
    else:
        parts.append(b"\r\n")
    return b"".join(parts)
