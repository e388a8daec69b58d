"""Signed store entries: an HMAC-SHA256 of the manifest with a team key.

A manifest lists every file's sha256, so its signature covers the artifacts too. Anyone who
can write to a shared store can forge an entry whose manifest matches its (tampered) files;
only the key tells a team member's entry from a forgery. Consumers that set `store_signed`
use only entries signed with their key (see docs/cache.md, "Trust")."""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

from quantbuild.store.keys import canonical_json

ALGORITHM = "hmac-sha256"


def key_id(key: bytes) -> str:
    """A short public name for a key (its hash), to tell which key signed an entry."""
    return hashlib.sha256(b"quantbuild-store-key:" + key).hexdigest()[:16]


def _mac(manifest: dict[str, Any], key: bytes) -> str:
    unsigned = {k: v for k, v in manifest.items() if k != "signature"}
    return hmac.new(key, canonical_json(unsigned).encode("utf-8"), hashlib.sha256).hexdigest()


def sign(manifest: dict[str, Any], key: bytes) -> dict[str, str]:
    """The signature record of a manifest (stored in it as `signature`)."""
    return {"algorithm": ALGORITHM, "key": key_id(key), "mac": _mac(manifest, key)}


def signature_problem(manifest: dict[str, Any], key: bytes) -> str | None:
    """Why a manifest is not signed with `key` (None: it is)."""
    signature = manifest.get("signature")
    if not isinstance(signature, dict):
        return "unsigned"
    if signature.get("algorithm") != ALGORITHM or signature.get("key") != key_id(key):
        return f"signed with another key ({signature.get('key')})"
    mac = signature.get("mac")
    if not isinstance(mac, str) or not hmac.compare_digest(mac, _mac(manifest, key)):
        return "wrong signature (the entry was changed after it was signed)"
    return None
