"""Header fields as the automatic-mail checks read them (`autoreply`, `mail_lists`,
`system_notices`, ...): each value unfolded and cut to its first `MAX_FIELD_TEXT` characters,
its first token without comments; and the share of a body they read for a machine's own part.
Bounded, because every inbound message is read so and a sender chooses the sizes."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from .message import unfold, without_comments

# A message's fields by lower-cased name (`Message.present`).
Fields = Mapping[str, Sequence[str]]
# Of a body, the decoded bytes read for a machine's own part: a delivery report's, a
# calendar reply's, the first text of a rule's forward.
BODY_READ_MAX = 64 << 10
# Of each field read here, the first this many characters (unfolded, blanks around it
# dropped): a keyword, an address or a list id and their comments are far shorter. Comments
# are removed in up to 8 passes over the text (`without_comments`), some fields several
# times a message: a hundred 100 KB fields of nested comments `(((...)))` (Return-Path,
# Precedence, List-Id) took 0.6 to 2.5 s of CPU.
MAX_FIELD_TEXT = 4096


def values_of(fields: Fields, name: str) -> list[str]:
    """The non-empty unfolded values of every field of that (lower-cased) name, each its
    first `MAX_FIELD_TEXT` characters."""
    values = fields.get(name)
    return [v for v in (field_text(x) for x in values) if v] if values else []


def field_text(value: str) -> str:
    """The value unfolded, blanks around it dropped, cut to `MAX_FIELD_TEXT` characters."""
    return unfold(value).strip()[:MAX_FIELD_TEXT]


def first_token(value: str) -> str:
    """`auto-replied; owner-email=x (vacation)` -> `auto-replied`: lower-cased, no comments
    (of the first `MAX_FIELD_TEXT` characters)."""
    text = without_comments(field_text(value), repl=" ")
    return text.split(";", 1)[0].strip().lower()
