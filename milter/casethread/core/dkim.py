"""DKIM signatures a message already carries (RFC 6376): what stamping must leave alone.

An app that signs its own mail before handing it to the MTA expects the signature to arrive
intact; a broken one fails DMARC at the recipient, who may then reject the mail. The body hash
covers the whole body, and `h=` names the header fields the signature covers: an added field of
such a name counts too (verifiers take the fields from the bottom), so neither may change.
"""

from __future__ import annotations

import re

from .message import Message, unfold

_H_TAG = re.compile(r"(?:^|;)\s*h\s*=([^;]*)", re.IGNORECASE)


def signed_fields(msg: Message) -> frozenset[str] | None:
    """Lower-cased names of the fields any DKIM-Signature covers (its own name included);
    None when the message carries no signature."""
    signatures = msg.get_all("DKIM-Signature")
    if not signatures:
        return None
    names = {"dkim-signature"}
    for signature in signatures:
        found = _H_TAG.search(unfold(signature))
        if found:
            names.update(n.strip().lower() for n in found.group(1).split(":") if n.strip())
    return frozenset(names)
