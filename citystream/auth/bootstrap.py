"""The keys `citystream up` makes on its first start, so that a new platform is usable at once and secure
from the first minute: an admin key for the operator and a sensor key (create, read) for the demo city and
for trying writes. Their secrets are kept in DATA_DIR/keys (mode 0600), as the broker's sensor password is;
the banner names the files and shows only the key ids. A key file that exists is kept, even if its key was
revoked: revoking it is the operator's decision, and a new key is one `citystream keys create` away."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import psycopg

from citystream.auth.credentials import generate_key, split_key, store_key
from sensorthings.model.access import Role


@dataclass(frozen=True)
class PlatformKey:
    label: str
    file: Path
    token: str

    @property
    def masked(self) -> str:
        parts = split_key(self.token)
        return f"cs_{parts[0]}_***" if parts else "***"


_KEYS = (("admin", "admin-key", frozenset({Role.ADMIN})),
         ("demo sensor", "demo-sensor-key", frozenset({Role.CREATE, Role.READ})))


def key_file(data_dir: Path, label: str) -> Path:
    return data_dir / "keys" / dict((lbl, name) for lbl, name, _ in _KEYS)[label]


def ensure_platform_keys(dsn: str, data_dir: Path) -> list[PlatformKey]:
    """The admin and demo sensor keys, created (and their files written) where the files do not exist."""
    folder = data_dir / "keys"
    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, 0o700)
    found: list[PlatformKey] = []
    for label, name, roles in _KEYS:
        path = folder / name
        if not path.exists():
            # The file first (O_EXCL: a second `up` on the directory fails here, before a key exists), then
            # the key; a key that could not be stored takes its file with it.
            key = generate_key()
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(descriptor, "w") as out:
                out.write(key.token + "\n")
            try:
                with psycopg.connect(dsn, autocommit=True) as conn:
                    store_key(conn, key, f"{label} (created by citystream up)", roles)
            except BaseException:
                path.unlink(missing_ok=True)
                raise
        found.append(PlatformKey(label, path, path.read_text().strip()))
    return found
