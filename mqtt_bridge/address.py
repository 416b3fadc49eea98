"""Where an MQTT broker is and how to log in: the one parser of `mqtt://` URLs in CityStream."""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

SCHEMES = {"mqtt": False, "tcp": False, "mqtts": True, "ssl": True}  # scheme -> TLS


@dataclass(frozen=True)
class BrokerAddress:
    host: str
    port: int
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls: bool = False

    @classmethod
    def from_url(cls, url: str) -> BrokerAddress:
        """`mqtt://[user[:password]@]host[:port]` (also `tcp://`; `mqtts://`/`ssl://` for TLS, default port
        8883). Percent-escapes in the user name and password are decoded."""
        parts = urlsplit(url if "://" in url else f"mqtt://{url}")
        scheme = parts.scheme.lower()
        if scheme not in SCHEMES:
            raise ValueError(f"unsupported MQTT URL scheme {parts.scheme!r} in {url!r}: use mqtt://host:port")
        if not parts.hostname:
            raise ValueError(f"MQTT URL {url!r} has no host")
        tls = SCHEMES[scheme]
        try:
            port = parts.port or (8883 if tls else 1883)
        except ValueError as exc:
            raise ValueError(f"MQTT URL {url!r} has an invalid port") from exc
        return cls(parts.hostname, port,
                   unquote(parts.username) if parts.username is not None else None,
                   unquote(parts.password) if parts.password is not None else None, tls)

    @property
    def url(self) -> str:
        """The address without credentials (safe to print)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'mqtts' if self.tls else 'mqtt'}://{host}:{self.port}"
