"""Bearer tokens: ``--tokens FILE`` holds one ``owner token`` pair a line (``#`` comments and
blank lines ignored). Tokens are hashed (SHA-256) as the file is read and only the hashes are
kept; a request's token is hashed and the hash looked up, so no token is held in memory and
no comparison's timing tells anything about a token."""

from __future__ import annotations

import hashlib
from pathlib import Path

from daskmm.errors import DaskmmError
from daskmm.service.jobdoc import valid_owner

MIN_TOKEN_LENGTH = 16


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class Tokens:
    """``token hash -> owner``."""

    def __init__(self, owners: dict[str, str]):
        self._owners = dict(owners)

    @classmethod
    def read(cls, path: str | Path) -> Tokens:
        p = Path(path)
        if not p.is_file():
            raise DaskmmError(f"--tokens {str(p)!r} does not exist; give a file of "
                              "'owner token' lines")
        owners: dict[str, str] = {}
        for i, line in enumerate(p.read_text().splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            parts = line.split()
            if len(parts) != 2:
                raise DaskmmError(f"--tokens {str(p)!r} line {i}: expected 'owner token', got "
                                  f"{len(parts)} field(s)")
            owner, token = parts
            if not valid_owner(owner):
                raise DaskmmError(f"--tokens {str(p)!r} line {i}: owner {owner[:80]!r} is not "
                                  "a valid owner name; use 1-64 letters, digits, '_', '.' or "
                                  "'-', starting with a letter or digit and not with "
                                  "'daskmm-service' (it names the owner's results folder)")
            if len(token) < MIN_TOKEN_LENGTH:
                raise DaskmmError(f"--tokens {str(p)!r} line {i}: the token of {owner!r} has "
                                  f"{len(token)} characters; use at least {MIN_TOKEN_LENGTH} "
                                  "(e.g. python -c 'import secrets; print(secrets.token_hex"
                                  "(24))')")
            h = digest(token)
            if h in owners and owners[h] != owner:
                raise DaskmmError(f"--tokens {str(p)!r} line {i}: the same token is given to "
                                  f"{owners[h]!r} and {owner!r}")
            owners[h] = owner
        if not owners:
            raise DaskmmError(f"--tokens {str(p)!r} holds no 'owner token' line")
        return cls(owners)

    def owner(self, authorization: str | None) -> str | None:
        """The owner of an ``Authorization: Bearer TOKEN`` header, or None."""
        if not authorization:
            return None
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None
        return self._owners.get(digest(token.strip()))
