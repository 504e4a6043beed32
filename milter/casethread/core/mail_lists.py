"""Mailing-list mail and the list managers' own notices: the List-* fields (RFC 2369, RFC
2919) and `Precedence: list`, the list's own addresses, a list that is one of our support
addresses, and the notices Mailman, Groups.io, ezmlm and Sympa compose themselves. Apart from
`autoreply` because others ask too: the engine whether our outbound mail is a list's (it
opens no case), the resolver for an inbound list's addresses (a list is nobody's
participant)."""

from __future__ import annotations

import re
from collections.abc import Callable

from .addresses import first_address
from .field_values import Fields, field_text, first_token, values_of
from .message import Message, unfold, without_comments
from .msgid import first_id

# The fields that make mail a list's (RFC 3834 §2: a responder MAY ignore mail with a List-*
# field), ezmlm's and Groups.io's Mailing-List too.
LIST_HEADERS = ("list-id", "list-unsubscribe", "list-post", "mailing-list")
# Marks of list managers that add no List-* field (Mailman 2's X-BeenThere, SmartList's
# X-Mailing-List): list mail for the exceptions below, no bulk by themselves.
LIST_MARKS = ("x-beenthere", "x-mailman-version", "x-mailing-list")
# RFC 2369 §2: the URLs are in angle brackets, "with internal whitespace being ignored" (a
# long one is folded inside them).
_MAILTO = re.compile(r"<\s*mailto\s*:([^>?]+)", re.I)
# A quoted string, closed (group 1 is the `"`) or not: one never closed is matched too and
# kept as it is (`_unquoted`), so the search goes on after it instead of starting again at
# each `"` it holds (`"\"\"\"...` unclosed: quadratic, 3.7 s for a 20 KB List-Id). A quote
# after the start of an unclosed one fails the same way: it follows an escaping backslash,
# and its scan reads what the first one read.
_QUOTED = re.compile(r'"(?:[^"\\]|\\.)*+("?)')
_LIST_ID = re.compile(r"<([^<>]+)>")
# The addresses of a list's own beside `team@`, which a list manager's notice comes from (a
# post it relays comes from its poster or, under DMARC mitigation, from `team@` itself): a
# role after `-` (Mailman's `team-bounces@`, `team-owner@`, `team-request@`; Sympa's
# `team-request@`) or `+` (Groups.io's `team+owner@`), or `owner-team@` (Majordomo's, and
# the sendmail aliases' convention for a list's owner).
_LIST_ADMIN_ROLES = ("bounces", "owner", "request")
# The fields that name a list's own addresses: its name (`List-Id`, `List-Post`), the command
# addresses of RFC 2369 (`List-Help`, `List-Subscribe`: `sympa@`, `LISTSERV@`, `majordomo@`,
# `team-request@`, `team+help@`), and the contact of `Mailing-List` (ezmlm's "contact
# team-help@...; run by ezmlm", Groups.io's "list team@groups.io; contact
# team+owner@groups.io"). Not `List-Owner` (it may name the owner's own mailbox, and the
# owner posts from it) nor `List-Unsubscribe` (on apps' and people's mail too).
_LIST_COMMAND_FIELDS = ("list-help", "list-subscribe")
_MAILING_LIST_CONTACT = re.compile(r"(?:^|;)\s*contact\s+(?:mailto:)?<?([^\s<>;,]+@[^\s<>;,]+)",
                                   re.I)
# The fields that make mail a list's, naming the list: only on such mail is a command field
# read (apps write RFC 2369's fields on a person's own mail too: Nodemailer's `list` option).
_LIST_NAMING_FIELDS = ("list-id", "list-post", "mailing-list")
# The fields that may name a list manager's own address (`_names_as_command`).
_LIST_ADMIN_FIELDS = (*_LIST_COMMAND_FIELDS, "mailing-list")
_LIST_NOTICE_FIELDS = frozenset({"x-list-administrivia", *_LIST_NAMING_FIELDS,
                                 *_LIST_COMMAND_FIELDS})


def list_manager_notice(msg: Message, fields: Fields | None = None) -> bool:
    """Whether a list manager composed this mail itself, a notice to a poster or to the list's
    owners ("Your message to Team awaits moderator approval"), never a post it relays:
    Mailman 2's `X-List-Administrivia: yes`, or list mail whose From is one of the list's own
    addresses but its posting address (`_list_role`, `_names_as_command`: Mailman 3 sends its
    notices from `team-bounces@`, Mailman 2 from `team-owner@`, Groups.io from
    `team+owner@`). A post comes from its poster or, under DMARC mitigation, from the posting
    address, which RFC 2369's own example names in `List-Help` and `List-Subscribe` too
    (`<mailto:list@host.com?subject=help>`). `fields`: the message's signal fields, when the
    caller has them (`autoreply.read_signals`)."""
    if fields is None:
        fields = msg.present(_LIST_NOTICE_FIELDS)
    if any(first_token(v) == "yes" for v in values_of(fields, "x-list-administrivia")):
        return True
    if not any(name in fields for name in _LIST_NAMING_FIELDS):
        return False  # most mail: no list it names
    sender = first_address(msg.get("From") or "").lower()
    if "@" not in sender:
        return False
    named = _names_as_command(fields, sender)
    if not (named or any(role in sender for role in _LIST_ADMIN_ROLES)):
        return False  # a post from its poster: the list's own addresses need not be read
    lists = {address.lower() for address in _list_addresses(fields)}
    return sender not in lists and (named or any(_list_role(sender, a) for a in lists))


# Sympa composes its own notices (a confirmation request that attaches the post it holds for
# us, "Your message has been rejected." quoting its Subject, a command's report) from
# templates, each with `Auto-Submitted: auto-generated` and a Message-ID of Sympa's own form,
# `<sympa.TIME.PID.RAND@domain>` (6.2's `Sympa::unique_message_id`, as the
# `tools::get_message_id` of earlier versions), from the robot's `sympa@` or the list's
# `team-request@`, and without the list fields `list_manager_notice` reads. A post Sympa
# relays keeps its poster's Message-ID.
_SYMPA_MESSAGE_ID = re.compile(r"sympa\.\d+\.\d+\.\d+@\S+")


def sympa_notice(msg: Message) -> bool:
    """Whether Sympa composed this mail itself: its Message-ID's form (`_SYMPA_MESSAGE_ID`).
    Only automatic mail is asked (`autoreply.from_mail_system`): Sympa marks every notice so."""
    mid = first_id(msg.get_filled("Message-ID"))
    return mid is not None and _SYMPA_MESSAGE_ID.fullmatch(mid) is not None


def _list_role(sender: str, address: str) -> bool:
    """Whether `sender` is a role address of the list `address` (both lower case): a role of
    `_LIST_ADMIN_ROLES` after `-` or `+` (`team-owner@`, `team+owner@`), or `owner-team@`,
    in the list's domain."""
    local, _, domain = sender.rpartition("@")
    list_local, _, list_domain = address.rpartition("@")
    if domain != list_domain or not list_local:
        return False
    if local == "owner-" + list_local:
        return True
    rest = local[len(list_local):]
    return (local.startswith(list_local) and rest[:1] in ("-", "+")
            and rest[1:] in _LIST_ADMIN_ROLES)


def _names_as_command(fields: Fields, sender: str) -> bool:
    """Whether the list's command fields (`_LIST_COMMAND_FIELDS`) or its `Mailing-List`
    contact name `sender` (lower case). A value is parsed only when its text, blanks dropped
    (as `_post_addresses` drops them), holds the sender: most list mail is a post, whose
    poster none of them names."""
    for name in _LIST_ADMIN_FIELDS:
        for raw in fields.get(name, ()):
            if sender not in "".join(raw.split()).lower():
                continue
            value = field_text(raw)
            named = _contact_address(value) if name == "mailing-list" else _post_addresses(value)
            if any(sender == address.lower() for address in named):
                return True
    return False


def _contact_address(value: str) -> list[str]:
    """The address a `Mailing-List` value names after "contact", or none."""
    found = _MAILING_LIST_CONTACT.search(value)
    return [found.group(1)] if found is not None else []


def precedence_values(fields: Fields) -> set[str]:
    """The `Precedence` (and `X-Precedence`) values, each its first token."""
    return {first_token(v) for n in ("precedence", "x-precedence") for v in fields.get(n, ())}


def marks_list_mail(fields: Fields, precedence: set[str]) -> bool:
    """Whether the fields mark list mail: `Precedence: list` (`precedence`, the mail's
    `precedence_values`), a list field or a list manager's mark (`LIST_MARKS`)."""
    return "list" in precedence or any(
        values_of(fields, name) for names in (LIST_HEADERS, LIST_MARKS) for name in names)


def is_our_list(fields: Fields, ours: Callable[[str], bool]) -> bool:
    """Whether the mail's list is one of our support addresses (a Google Group or a Mailman
    list that is support@): its `List-Post` mailto address, or its `List-Id` read as one
    (`<support.example.com>` for support@example.com, RFC 2919)."""
    return any(ours(address) for address in _list_addresses(fields))


def _list_addresses(fields: Fields) -> list[str]:
    """The list's own addresses its fields name: `List-Post`'s mailto addresses, `List-Id`
    read as one."""
    return [*(a for value in values_of(fields, "list-post") for a in _post_addresses(value)),
            *(a for value in values_of(fields, "list-id") for a in _list_id_address(value))]


def _post_addresses(value: str) -> list[str]:
    """The mailto addresses of a `List-Post` value (none for `NO (posting not allowed)`),
    whitespace inside the angle brackets ignored (RFC 2369 §2)."""
    return ["".join(a.split()) for a in _MAILTO.findall(value) if a.strip()]


def _unquoted(quoted: re.Match[str]) -> str:
    """A closed quoted string as a blank; an unclosed one as it is."""
    return " " if quoted.group(1) else quoted.group()


def _list_id_address(value: str) -> list[str]:
    """A `List-Id` value read as the list's address (`<team.lists.example.org>`:
    team@lists.example.org, RFC 2919), or none: the id in angle brackets after the phrase,
    which may be a quoted string holding brackets of its own (`"Team <x>"
    <team.example.org>`); without brackets, a value that is nothing but an id, as some list
    managers write it (`team.example.org`); an address written where the id belongs
    (`<team@example.org>`) as that address."""
    text = _QUOTED.sub(_unquoted, without_comments(unfold(value), repl=" "))
    found = _LIST_ID.findall(text)
    ident = "".join(found[-1].split()) if found else text.strip()
    if not ident or any(c.isspace() or c in '<>"' for c in ident) or ident.count("@") > 1:
        return []
    if "@" in ident:  # `<team@example.org>`: an address where the id should be
        return [ident] if ident[0] != "@" and ident[-1] != "@" else []
    label, _, namespace = ident.partition(".")
    return [f"{label}@{namespace}"] if label and namespace else []


# Fields only a list writes; `List-Unsubscribe` is also on apps' transactional mail.
_STRONG_LIST_FIELDS = tuple(n for n in (*LIST_HEADERS, *LIST_MARKS) if n != "list-unsubscribe")
_LIST_FIELDS = frozenset({"precedence", "x-precedence", *LIST_HEADERS, *LIST_MARKS})
_LIST_ADDRESS_FIELDS = frozenset({"list-post", "list-id"})


def is_list_mail(msg: Message, ours: Callable[[str], bool]) -> bool:
    """Whether the mail is a mailing list's or a newsletter's: a list field (`List-Id`,
    `List-Post`, `Mailing-List`, Mailman's marks), `Precedence: list`, or `List-Unsubscribe`
    on mail to more than one recipient who is not ours; but not `Precedence: bulk` alone (RT
    marks all its mail so), nor a list that is one of our support addresses (`ours`)."""
    fields = msg.present(_LIST_FIELDS)
    if not fields:
        return False
    precedence = precedence_values(fields)
    if not marks_list_mail(fields, precedence) or is_our_list(fields, ours):
        return False
    if "list" in precedence or any(values_of(fields, name) for name in _STRONG_LIST_FIELDS):
        return True
    # List-Unsubscribe alone: apps put it on their transactional mail too (an answer to one
    # customer must open its case); one message to several outside recipients is a mailing.
    return sum(1 for rcpt in msg.envelope.rcpts if not ours(rcpt)) > 1


def list_addresses(msg: Message) -> frozenset[str]:
    """The mailing list's own addresses, as its mail names them: the `List-Post` mailto
    addresses and the `List-Id` read as one (`<team.googlegroups.com>` for
    team@googlegroups.com, RFC 2919), lower-cased. A list is nobody's participant: Google
    Groups and Mailman's DMARC mitigation write its address as From ("'Pat' via Team
    <team@googlegroups.com>"), so a list address taken for a person would make every
    member's mail a participant's."""
    fields = msg.present(_LIST_ADDRESS_FIELDS)
    if not fields:  # most mail: no list field, no address to read (asked of every message)
        return frozenset()
    return frozenset(a.lower() for a in _list_addresses(fields))
