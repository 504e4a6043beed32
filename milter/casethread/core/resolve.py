"""Which case a message belongs to: the resolution strategies of DESIGN §5, in configured order.

Each strategy looks at one kind of evidence and returns the case it names, or None. The
`Resolver` is built once from the settings (regexes compiled, strategy order fixed); `resolve`
runs per message and only reads the index. Evidence that is expensive to extract (decoded body
text) is computed at most once per message, and only if a strategy asks for it.
"""

from __future__ import annotations

import hashlib
import itertools
import re
from collections.abc import Callable, Iterable, Iterator, Sequence

from . import autoreply, bodytext, feedback, mail_lists, mime, msgid, subject, thread_index
from .addresses import (
    AddressMatcher,
    cached_matches,
    envelope_address,
    header_addresses,
    unicode_address,
)
from .decision import Step
from .frozen import frozen
from .lazy import lazy
from .message import Message, unfold
from .model import AliasKind, CaseRecord, is_valid_case_id
from .settings import ExternalRefRule, Settings
from .store import CaseReader
from .token import (
    MAX_CANDIDATES,
    Keyring,
    decoded_subject_tokens,
    find_tokens,
    find_tokens_at,
    is_token_shaped,
    tag_pattern,
    token_from_anchor,
)

# What a bounce's returned headers (or a read receipt's report) may name us by. Not a DSN's
# `Original-Envelope-Id`: it is the ENVID the submitting client gave (RFC 3461 §4.4), which
# nothing on our outbound path sets, so it names none of our mail; nor `Final-Recipient`:
# a report of the mail system makes nobody a participant (`adds_people`).
_RETURNED_FIELD = re.compile(
    rb"^(message-id|original-message-id|in-reply-to|references|subject|to|cc)[ \t]*:"
    rb"(.*(?:\r?\n[ \t].*)*)", re.I | re.M
)
# The fields that hold the returned mail's own Message-ID.
_RETURNED_ID_FIELDS = ("message-id", "original-message-id")


# Distinct external references one message may look up and record: a hostile body with
# thousands of ticket-number look-alikes must not cost thousands of lookups and writes.
MAX_EXTERNAL_REFS = 16
# Distinct human case references one message may look up (each costs two lookups).
MAX_CASE_REFS = 16
# Participants recorded per message (and recipients looked up as participants): enough for
# any real Cc list, bounded for hostile ones.
MAX_PARTICIPANTS = 50


def participant_key(case_id: str, address: str) -> str:
    return f"{case_id} {address}"


def adds_people(match: str, sender_known: bool, mail_system: bool = False) -> bool:
    """Whether an inbound mail that `match`ed a case makes its people (From, Reply-To, To,
    Cc) participants of the cases it goes to: when its sender is one already, or it carries our
    token or case anchor (its sender saw our mail). Other evidence anyone can repeat (a
    Message-ID a customer's mail had, an Outlook root, a case number, another system's
    reference): a stranger's mail that matched by it still threads, `X-Case-Sender: unknown`,
    but adds nobody, or the stranger would be `known` from then on and a guessable
    `[Case C-...]` would thread their mail. (Mail that opens a case adds its people: its
    sender opened it.) A report of the `mail_system` about a delivery (a bounce, a delay
    warning: `autoreply.from_mail_system`) adds nobody, also when our token found it (an
    Exchange or Domino notice quotes our Subject in its text, Gmail's former text bounce
    returns our mail after a line of its own): its From is the MTA's (`MAILER-DAEMON@`,
    `postmaster@`), its To the address our mail came from."""
    return not mail_system and (sender_known or match == "token")


def subject_participant_key(subject_key: str, address: str) -> str:
    """A normalised subject as one participant used it; a digest, as addresses are stored
    only hashed."""
    raw = f"{address}\x00{subject_key}".encode("utf-8", "surrogateescape")
    return hashlib.sha256(raw).hexdigest()


@frozen
class Hit:
    case: CaseRecord
    match: str


@frozen
class Found:
    """An inbound mail's case found by its header fields alone, at end of headers, with the
    evidence that found it: the engine decides on them at end of message instead of resolving
    the same fields again (`Engine.process`)."""
    evidence: Evidence
    hit: Hit


def _same_domain(a: str, b: str) -> bool:
    """Whether two addresses share a domain, or one's is under the other's: a system's
    reply address per thread or per message (`reply+KEY@crm.example` beside `help@`)."""
    da, db = a.rpartition("@")[2], b.rpartition("@")[2]
    return da == db or da.endswith("." + db) or db.endswith("." + da)


class Evidence:
    """Per-message view shared by the strategies; lazy, so unused evidence costs nothing."""

    def __init__(self, msg: Message, reader: CaseReader, resolver: Resolver, now: int) -> None:
        self.msg = msg
        self.reader = reader
        self.now = now
        self._resolver = resolver
        # Why token-shaped strings failed verification (token.MALFORMED, ...), each reason once.
        self.token_failures: tuple[str, ...] = ()
        # What each strategy saw, for `casethread filter --explain` (`Decision.steps`).
        self.trace: list[Step] = []
        # Notes for the log line made while deciding and recording the mail.
        self.notes: list[str] = []
        # The highest case number a valid token named that the index holds no case for.
        self.lost_number = 0
        # External references seen but not yet known: recorded for whichever case wins.
        self.new_external: list[str] = []
        # Whether a strategy looked at the body (`tree`, which every body reader goes through).
        self.body_read = False

    @lazy
    def sender(self) -> str | None:
        found = header_addresses(self.msg.get_all("From"))
        return found[0] if found else None

    @lazy
    def relayed_author(self) -> str | None:
        """The customer whose mail our own list re-sent under its From (`list_member`) when
        `inbound.list_authors` asks for it, else None. They stand in for the From as sender
        and participant, with the trust a From of ours has: a forged From of ours (and so such
        a copy) is what DMARC on our own domain stops, as DMARC on theirs stops a forged From
        of theirs; a customer whose domain rejects forged mail, the one Google rewrites, is no
        safer than ours, hence the setting."""
        return self.list_member if self._resolver.list_authors else None

    @lazy
    def list_member(self) -> str | None:
        """The customer whose mail our own list re-sent under its From (support@ is a Google
        Group, or a Mailman list under DMARC mitigation: "'Pat' via Support
        <support@example.com>", its `List-Id` or `List-Post` naming that address), as the list
        wrote them, else None. Trusted only as `relayed_author`; else it only tells the
        list's customers apart for the flood limit (`author`).

        Read from what the list writes after the poster's own fields: Google Groups'
        `X-Original-From`, the original From (its last field; one that names ours or a list
        names nobody, and the Reply-To is then not read; in a Mailman copy it is the
        poster's, and names nobody), else a `Reply-To` of one field and one address, as
        Mailman 3 writes the original From for a poster who wrote none. Not a Reply-To of
        several: Mailman appends the original From only when the poster's Reply-To lacks it,
        so "Eve, Pat" may be Eve's own. (Mailman set to reply to the list puts the author in
        Cc: not read.)"""
        sender = self.sender
        if sender is None or not self._resolver.is_ours(sender):
            return None
        lists = self.list_addresses
        if sender not in lists:
            return None
        msg = self.msg
        if msg.get_all("X-Original-From"):
            if msg.get_all("X-Mailman-Version"):
                # Mailman writes no X-Original-From and keeps a poster's: Eve's own
                # "X-Original-From: Pat" would make her Pat.
                return None
            last = self.original_from
        elif len(values := msg.get_all("Reply-To")) == 1:
            # Mailman appends the original From to the poster's Reply-To only when it is
            # not there already: Eve's "Reply-To: Eve, Pat" comes as it was, Pat last. Only a
            # Reply-To of one address (the poster wrote none, or only themselves) names the
            # author for certain.
            found = header_addresses(values)
            if len(found) != 1:
                return None
            last = found[0]
        else:
            return None
        if last is None or "@" not in last or last in lists or self._resolver.is_ours(last):
            return None
        return last

    @lazy
    def original_from(self) -> str | None:
        """The address of the last `X-Original-From` (Google Groups writes the original From
        there, below any of the poster's own), or None."""
        values = self.msg.get_all("X-Original-From")
        found = header_addresses(values[-1:]) if values else []
        return found[-1] if found else None

    @lazy
    def from_ours(self) -> bool:
        """Whether the mail is our own: its From is one of our support addresses, and it names
        nobody else as its author (no Reply-To of another domain, as a web form's visitor's;
        not our list's copy of a member's mail). A monitoring system or a script that writes as
        support@, or an agent's mail that went out another way and came back. Also our own
        list's copy of mail whose original From was ours (its last X-Original-From): our
        answer Cc'd to support@ comes back so where support@ is a Google Group."""
        sender, is_ours = self.sender, self._resolver.is_ours
        if sender is None or not is_ours(sender):
            return False
        if sender in self.list_addresses:
            original = self.original_from
            if original is None or not is_ours(original):
                return False
            # Then as our own mail sent straight to us: a Reply-To of another domain (a web
            # form's visitor, which the group keeps) names its author.
        return self.author == sender

    @lazy
    def author(self) -> str | None:
        """Who wrote the mail, as the flood limit and `subject-match` tell senders apart: its
        From or, when its Reply-To names someone else (its first address that is neither ours
        nor a mailing list's), the two as one key (From, a line break, that address: no
        address read from a field holds one). A web form sends every visitor's question under
        one From of its own (`wordpress@`, often our support address itself) with the visitor
        in Reply-To, as a list that re-sends a member's mail under its own From (Google
        Groups' "'Pat' via Team", Mailman's DMARC mitigation) names the member there: counted
        against the From alone, the hour's 21st visitor would open no case. A Reply-To never
        speaks for the address it names, which anyone can write there in mail from their own
        domain (DMARC checks From only). One in the From's own domain (or one above or below
        it) is the same sender: a system that names a reply address of its own per thread or
        per message (`reply+KEY@`), marked automatic or not, would else never loop. Our own
        list's copy of a member's mail is the member's (`relayed_author`); without the
        setting, the group's From and the member (`list_member`) as one key, also when its
        Reply-To is in the member's domain: the group's From is ours, never a notifier's."""
        if self.relayed_author is not None:
            return self.relayed_author
        sender, is_ours, lists = self.sender, self._resolver.is_ours, self.list_addresses
        member = self.list_member if sender in lists else None
        for address in header_addresses(self.msg.get_all("Reply-To")):
            if "@" in address and address not in lists and not is_ours(address):
                if member is not None and _same_domain(address, member):
                    # The member's own reply address (a notifier's `reply+KEY@` per message
                    # relayed by our group): the member, or its loop would never be one.
                    break
                if sender is not None and _same_domain(address, sender):
                    return sender
                return f"{sender or ''}\n{address}"
        if member is not None:
            # Our own group's copy whose Reply-To names only the group or the member's
            # domain: its X-Original-From splits the count as a Reply-To would (a count, not
            # trust), else the hour's 21st customer through the group would open no case.
            return f"{sender}\n{member}"
        return sender

    @lazy
    def subject(self) -> str:
        return unfold(self.msg.get("Subject") or "")

    @lazy
    def thread_root(self) -> bytes | None:
        """The Outlook conversation root of the mail's Thread-Index (the first field that names
        one): read by the strategy, recorded with the mail, kept by a case the mail opens."""
        return thread_index.first_root(self.msg.get_all("Thread-Index"))

    @lazy
    def top(self) -> mime.TopFields:
        return mime.top_fields(self.msg.headers)

    @lazy
    def tree(self) -> mime.Part:
        """The body's MIME structure, parsed once for the strategies and for stamping."""
        self.body_read = True
        top = self.top
        return mime.parse(self.msg.body, top.content_type, top.cte, top.disposition)

    @lazy
    def body_texts(self) -> list[str]:
        top = self.top
        return list(
            bodytext.iter_texts(
                top.content_type, top.cte, self.msg.body, self._resolver.scan_budget,
                top_disposition=top.disposition, tree=self.tree,
            )
        )

    @lazy
    def unquoted_texts(self) -> list[str]:
        """The body texts without the quote marks (">", "|") that start their lines, for the
        patterns of case and external references: a reference wrapped inside a quote (`[Case` /
        `> C-1]`, or an HTML line inside a <blockquote>, which gets marks too) reads as
        written, and a pattern anchored at `^` matches a quoted line."""
        return [_LINE_QUOTES.sub("", text) if ">" in text or "|" in text else text
                for text in self.body_texts]

    def with_body(self, msg: Message, now: int) -> Evidence:
        """This evidence for the same mail with its body (`msg`, read at end of message, `now`):
        what the header fields showed stands (and the envelope sender, which SMTP gives before
        them: the `signals`), what is still to be read comes from the body."""
        if self.body_read:  # what the body showed would be the empty body's
            raise ValueError("evidence that read an empty body")
        self.msg, self.now = msg, now
        return self

    def case_by_id(self, case_id: str | None) -> CaseRecord | None:
        return self.reader.get_case(case_id) if case_id else None

    def case_by_alias(self, kind: AliasKind, key: str) -> CaseRecord | None:
        hit = self.reader.find(kind, key)
        return self.case_by_id(hit.case_id) if hit else None

    @lazy
    def signals(self) -> autoreply.Signals:
        """What the classifier and the bounce strategy read of every mail, read once."""
        return autoreply.read_signals(self.msg)

    @lazy
    def list_addresses(self) -> frozenset[str]:
        """The addresses of the mailing list that sent this mail, if it is list mail."""
        return mail_lists.list_addresses(self.msg)

    def is_participant(self, case_id: str) -> bool:
        # Our support address is on every case's mail: anyone can forge it as From. A list
        # that re-sends a member's mail under its own From (Google Groups, Mailman's DMARC
        # mitigation) hides who wrote it: any member may have, also when the list's address
        # was recorded (a customer's mail Cc'd it). Our own list names the member it re-sent
        # (`relayed_author`), who stands in for the From.
        if self.relayed_author is not None:
            return self.has_participant(case_id, self.relayed_author)
        if (self.sender is None or self._resolver.is_ours(self.sender)
                or self.sender in self.list_addresses):
            return False
        return self.has_participant(case_id, self.sender)

    def to_participant_of(self, case_id: str, every: bool = False) -> bool:
        """Whether outbound mail goes to a participant of the case (its recipients are the
        customers); with `every`, whether every customer its To and Cc name is one (mail that
        names none there: whether it goes to one). `every` is for a resend, which names
        the very people its first pass recorded; its envelope may hold a Bcc'd recipient
        alone, as a relay that sends each Bcc its own copy submits it."""
        resolver, msg = self._resolver, self.msg
        if every:
            named = resolver.participants(msg, ours=True, envelope=False)[:MAX_PARTICIPANTS]
            if named:
                return all(self.has_participant(case_id, a) for a in named)
        recipients = resolver.participants(msg, ours=True)[:MAX_PARTICIPANTS]
        return any(self.has_participant(case_id, a) for a in recipients)

    def has_participant(self, case_id: str, address: str) -> bool:
        """Whether `address` (an internationalised domain as its A-label) is a participant of
        the case; also under its U-label form, as earlier versions recorded a header address
        that spelled its domain so."""
        find = self.reader.find
        if find(AliasKind.PARTICIPANT, participant_key(case_id, address)) is not None:
            return True
        legacy = unicode_address(address)
        return (legacy is not None
                and find(AliasKind.PARTICIPANT, participant_key(case_id, legacy)) is not None)

    @property
    def log_notes(self) -> tuple[str, ...]:
        """What deciding and recording this mail adds to its log line (mostly nothing)."""
        if not self.token_failures and not self.notes:
            return ()
        return token_notes(self.token_failures) + tuple(self.notes)

    def case_by_tokens(self, candidates: Iterator[str]) -> CaseRecord | None:
        result = self._resolver.keyring.resolve(candidates)
        if result.failures:
            self._note_rejected(result.failures)
        if result.case_number is None:
            return None
        return self._case_of_number(result.case_number)

    def _case_of_number(self, number: int) -> CaseRecord | None:
        case = self.case_by_id(self.reader.case_for_number(number))
        if case is None and number > self.lost_number:
            # We signed it, for a case the index does not hold: the index lost cases (an
            # older backup restored, or a new index beside the old key). New cases must not
            # take that number, or the old case's replies would go to a stranger's.
            self.lost_number = number
            if "token-case-unknown" not in self.notes:
                self.notes.append("token-case-unknown")
            self.trace.append(f"  a valid token names case number {number}, which the index "
                              "does not hold")
        return case

    def case_by_body_tokens(self, texts: Iterable[list[tuple[int, int, str]]]) -> CaseRecord | None:
        """The case of the body's best token: of the first text (body part) that holds a
        valid one, the least deeply quoted, and the first from the top among those. `texts`
        gives each text's token-shaped candidates as (quote depth, position, token).

        Our token line ends our mail, below the older mail it quotes: in a reply that quotes
        with ">" our mail's token is one level up from those of the mail it quoted, whichever
        cases those name (a move, a split, a move back); an Outlook-style reply without quote
        marks starts its quote with the newest mail's header block, Subject and tag first.
        The message's own parts come before forwarded messages. Failed tokens count as
        invalid only when they come before the winner, as with the header fields."""
        keyring, left = self._resolver.keyring, MAX_CANDIDATES
        failures: list[str] = []
        for candidates in texts:
            # Each a case number, or why the token failed (Keyring.judge).
            judged = [(depth, pos, keyring.judge(token))
                      for depth, pos, token in candidates[:left]]
            left -= len(judged)
            valid = sorted((depth, pos, n) for depth, pos, n in judged if isinstance(n, int))
            for _, pos, number in valid:
                case = self._case_of_number(number)
                if case is not None:
                    self._note_rejected(
                        failures + [n for _, p, n in judged if isinstance(n, str) and p < pos])
                    return case
            failures += [n for _, _, n in judged if isinstance(n, str)]
            if left <= 0:
                break
        self._note_rejected(failures)
        return None

    def _note_rejected(self, failures: Sequence[str]) -> None:
        if failures:
            reasons = dict.fromkeys(failures)
            self.token_failures += tuple(why for why in reasons if why not in self.token_failures)
            self.trace.append(f"  {len(failures)} token-shaped string(s) failed verification "
                              f"({', '.join(reasons)})")


def token_notes(failures: Iterable[str]) -> tuple[str, ...]:
    """The log line's notes for tokens that failed: `token-invalid:<why>`, as
    `body-not-stamped:<why>` names its reason."""
    return tuple(f"token-invalid:{why}" for why in failures)


# The quote marks that start a line: ">", "> >", ">>" (blanks between them allowed), and "|",
# "| |", which some clients and users set as their quote prefix (token.py reads a token
# wrapped behind either).
_QUOTE_MARKS = re.compile(r"[ \t]*(?:[>|][ \t]*)*")
# The same marks at each line's start, for `unquoted_texts`: a reference wrapped in a "| "
# quote reads as one in a "> " quote does.
_LINE_QUOTES = re.compile(r"^[ \t]*+(?:[>|][ \t]*+)++", re.MULTILINE)


def _quote_depth(text: str, pos: int) -> int:
    """How deeply the line holding `pos` is quoted: its leading ">" (or "|") marks (HTML text
    has them per <blockquote>: bodytext.html_to_text)."""
    start = text.rfind("\n", 0, pos) + 1
    marks = _QUOTE_MARKS.match(text, start, pos)
    return marks.group().count(">") + marks.group().count("|") if marks else 0


Strategy = Callable[[Evidence], Hit | None]


def _first_hit(cases: Iterator[CaseRecord | None], match: str) -> Hit | None:
    for case in cases:
        if case is not None:
            return Hit(case, match)
    return None


class Resolver:
    def __init__(self, settings: Settings, keyring: Keyring) -> None:
        inbound = settings.inbound
        self.keyring = keyring
        self.scan_budget = inbound.scan_budget
        self._limit = inbound.references_limit
        self._template = settings.tokens.subject_template
        self._case_ref = re.compile(inbound.case_ref_pattern, re.I)
        # One of our support addresses (`inbound.addresses`): asked of every address of every
        # mail.
        self.is_ours = cached_matches(AddressMatcher(inbound.addresses))
        self._subject_window = inbound.subject_match.window
        self._external = [
            (rule, re.compile(rule.pattern), AddressMatcher(rule.sender))
            for rule in inbound.external_refs
        ]
        self._external_on = "external-ref" in inbound.strategies
        self.list_authors = inbound.list_authors
        self._vendor_rules = frozenset(rule.name for rule in inbound.external_refs if rule.sender)
        # Our own tag, removed before subjects are compared.
        self._tag = tag_pattern(self._template)
        table: dict[str, Strategy] = {
            "bounce": self.by_bounce,
            "token": self.by_token,
            "in-reply-to": self.by_in_reply_to,
            "references": self.by_references,
            "thread-index": self.by_thread_index,
            "subject-ref": self.by_subject_ref,
            "body-ref": self.by_body_ref,
            "external-ref": self.by_external_ref,
            "subject-match": self.by_subject_match,
        }
        self._order = [(name, table[name]) for name in inbound.strategies]
        # What `bounce_hit` runs: the strategies up to bounce (none when bounce is not used).
        names = list(inbound.strategies)
        self._to_bounce = self._order[:names.index("bounce") + 1] if "bounce" in names else []
        # Outbound mail is sent for the case the conversation already has, never a guessed one
        # (Thread-Index too: an Outlook recall, meeting update or forward carries only that);
        # failing that, for the case its own Message-ID already has (the same mail again).
        self._outbound_order = [
            *((name, table[name]) for name in ("token", "in-reply-to", "references")),
            ("thread-index", self._to_participants("thread-index", self.by_thread_index)),
            ("duplicate", self._to_participants("duplicate", self.by_own_message_id,
                                                every=True)),
        ]

    def uses(self, strategy: str) -> bool:
        """Whether inbound mail is resolved by `strategy` (`inbound.strategies`)."""
        return any(name == strategy for name, _ in self._order)

    def evidence(self, msg: Message, reader: CaseReader, now: int) -> Evidence:
        return Evidence(msg, reader, self, now)

    def participants(self, msg: Message, ours: bool,
                     lists: frozenset[str] | None = None,
                     author: str | None = None, envelope: bool = True) -> list[str]:
        """The customers' side of this mail, each once: neither our support addresses, which
        are on every case's mail and anyone can forge, nor the From of `ours` (outbound)
        mail, an agent, nor an address without a domain (an unqualified `RCPT
        TO:<postmaster>`). Outbound mail's envelope recipients count too (unless not
        `envelope`), after the header's: Bcc'd customers.
        `lists`: the inbound mail's list addresses when known (`Evidence.list_addresses`);
        `author`: the member our own list re-sent the mail of (`Evidence.relayed_author`),
        after the From, which is then ours: Google Groups may name them only in
        X-Original-From."""
        fields = msg.get_all("To") + msg.get_all("Cc")
        is_ours = self.is_ours
        if not ours:
            # Nor a mailing list's own address (its From under DMARC mitigation, its To):
            # every member's mail would be a participant's.
            if lists is None:
                lists = mail_lists.list_addresses(msg)
            # Reply-To too, after the From: a web form's visitor (`Evidence.author`), a
            # customer's other address. Read on its own, as `author` reads it: read with the
            # others, a garbled Reply-To (a form fills it from what the visitor typed) would
            # leave none of the From, To and Cc addresses (`header_addresses`).
            found = header_addresses(msg.get_all("From") + fields)
            found[1:1] = header_addresses(msg.get_all("Reply-To"))
            if author is not None:
                found.insert(1, author)
            # A loop, not a generator: every inbound mail's people are read.
            people = []
            for a in dict.fromkeys(found):
                if "@" in a and not is_ours(a) and a not in lists:
                    people.append(a)
            return people
        agents = set(header_addresses(msg.get_all("From")))
        found = header_addresses(fields)
        if envelope:
            found += [envelope_address(r) for r in msg.envelope.rcpts]
        return list(dict.fromkeys(a for a in found
                                  if "@" in a and a not in agents and not is_ours(a)))

    def resolve_inbound(self, ev: Evidence) -> Hit | None:
        """The case an inbound mail names (`resolve`), and the external references it carries
        for whichever case wins (`note_external_refs`)."""
        hit = self.resolve(ev)
        if hit is not None and hit.match != "external-ref":
            self.note_external_refs(ev)
        return hit

    def found_by_headers(self, ev: Evidence) -> Found | None:
        """This mail's case when `resolve_inbound` finds it without reading the body (`ev`'s
        message holds the header fields): then a milter need not read the body at all."""
        hit = self.resolve_inbound(ev)
        return Found(ev, hit) if hit is not None and not ev.body_read else None

    def bounce_hit(self, ev: Evidence) -> Hit | None:
        """The `bounce` strategy's case when `resolve` would take it (no strategy before it
        finds one), else None: a duplicate of a report is judged on the flood counter its
        first copy was counted on. Strategies after it are not run (the body is read for a
        report only, with the default order)."""
        hit = self._walk(ev, self._to_bounce)
        # Only the bounce strategy's hits are `bounce` (`_bounce_part`).
        return hit if hit is not None and hit.match == "bounce" else None

    def resolve(self, ev: Evidence, outbound: bool = False) -> Hit | None:
        return self._walk(ev, self._outbound_order if outbound else self._order)

    @staticmethod
    def _walk(ev: Evidence, order: Sequence[tuple[str, Strategy]]) -> Hit | None:
        """The first case a strategy of `order` finds, each strategy's answer traced."""
        for name, strategy in order:
            hit = strategy(ev)
            ev.trace.append(("{}: -> {.case.case_id}", (name, hit)) if hit
                            else name + ": no match")
            if hit is not None:
                return hit
        return None

    # -- the strategies ---------------------------------------------------------------------

    def _header_tokens(self, subjects: Iterable[str],
                       id_values: Iterable[str | None]) -> Iterator[str]:
        """The tokens of a mail's header fields (`subjects`, In-Reply-To/References values) in
        the order they count: the Subject's tags as written, our case anchors (they name the
        mail answered, where an encoded Subject may still hold a case's old tag), then the
        decoded Subject's. A generator: what comes after a valid token is never worked out."""
        unfolded = list(map(unfold, subjects))  # no comprehension: a call on Python 3.11
        for text in unfolded:
            yield from find_tokens(text, self._template)
        yield from self._anchors_in(id_values)
        for text in unfolded:
            if "=?" in text:  # most Subjects have no encoded words
                yield from decoded_subject_tokens(text, self._template)

    def _anchors_in(self, values: Iterable[str | None]) -> Iterator[str]:
        """The tokens of our case anchors among the IDs of these In-Reply-To/References values."""
        for value in values:
            # As written, left to right: outbound puts this case's anchor first, before those
            # of cases the conversation had before (a move, a split, a follow-up), and
            # clients keep the first IDs of References when they trim it.
            for mid in msgid.id_list(value, self._limit, oldest_first=True):
                token = token_from_anchor(mid)
                if token:
                    yield token

    def _body_tokens(self, ev: Evidence) -> Iterator[list[tuple[int, int, str]]]:
        # A generator, so the body is parsed only if the Subject held no valid token.
        # No more than the MAX_CANDIDATES first of a text are ever judged: a 1 MiB line of
        # tokens had 36,000 read, each line start searched for from the token back (quadratic).
        for text in ev.body_texts:
            shaped = ((pos, token) for pos, token in find_tokens_at(text, self._template)
                      if is_token_shaped(token))
            yield [(_quote_depth(text, pos), pos, token)
                   for pos, token in itertools.islice(shaped, MAX_CANDIDATES)]

    def by_token(self, ev: Evidence) -> Hit | None:
        # The header fields' tokens come before the body's, which may quote another case's mail.
        # The ID fields read as they are reached (`map`: no generator left to close).
        candidates = self._header_tokens(
            (ev.subject,), map(ev.msg.get, ("In-Reply-To", "References")))
        case = ev.case_by_tokens(candidates) or ev.case_by_body_tokens(self._body_tokens(ev))
        return Hit(case, "token") if case else None

    def _by_ids(self, ev: Evidence, field_name: str, match: str) -> Hit | None:
        value = ev.msg.get(field_name)
        ids = msgid.id_list(value, self._limit)
        # Past the limit, the thread's first ID still counts: clients that trim References
        # (Gmail, Thunderbird) keep it, and it is often our first mail of the case.
        oldest = msgid.first_id(value)
        if oldest and len(ids) >= self._limit and oldest not in ids:
            ids.append(oldest)
        return _first_hit((ev.case_by_alias(AliasKind.MESSAGE, m) for m in ids), match)

    def by_in_reply_to(self, ev: Evidence) -> Hit | None:
        return self._by_ids(ev, "In-Reply-To", "in-reply-to")

    def by_references(self, ev: Evidence) -> Hit | None:
        return self._by_ids(ev, "References", "references")

    @staticmethod
    def _to_participants(name: str, strategy: Strategy, every: bool = False) -> Strategy:
        """Outbound evidence that names no answered mail (an Outlook root, the mail's own
        Message-ID) counts only for a case the mail goes to a participant of: a recall, a
        meeting update or a resend goes to the same people; an agent's old answer forwarded
        to a new customer, or an app's template with a fixed Message-ID, does not. `every`:
        every customer it names (`Evidence.to_participant_of`): a resend names the very
        people its first pass recorded, while the app's mail to Bob may Cc the archive
        address its mail to Alice did."""
        def addressed(ev: Evidence) -> Hit | None:
            hit = strategy(ev)
            if hit is None or ev.to_participant_of(hit.case.case_id, every):
                return hit
            which = "a customer it names is not" if every else "no recipient is"
            ev.trace.append(f"{name}: {hit.case.case_id} not taken: {which} one of its "
                            "participants")
            return None
        return addressed

    def by_own_message_id(self, ev: Evidence) -> Hit | None:
        """Outbound mail submitted again (a client's resend after a timeout, an app's retry
        after a 4xx): its own Message-ID is recorded, and its case is the first pass's."""
        own = msgid.first_id(ev.msg.get_filled("Message-ID"))
        case = ev.case_by_alias(AliasKind.MESSAGE, own) if own else None
        return Hit(case, "duplicate") if case else None

    def by_thread_index(self, ev: Evidence) -> Hit | None:
        if ev.thread_root is None:
            if ev.msg.get("Thread-Index") is not None:
                ev.trace.append("  the Thread-Index names no conversation (not base64 of "
                                "22 + 5n bytes from 0x01, or a Nil or Max GUID)")
            return None
        case = ev.case_by_alias(AliasKind.THREAD_ROOT, ev.thread_root.hex())
        return Hit(case, "thread-index") if case else None

    def _by_case_ref(self, ev: Evidence, texts: Iterator[str], match: str) -> Hit | None:
        seen: set[str] = set()
        for text in texts:
            for found in self._case_ref.finditer(text):
                case_id = found.group(1).strip()
                if case_id in seen or not is_valid_case_id(case_id):
                    continue
                if len(seen) >= MAX_CASE_REFS:
                    return None
                seen.add(case_id)
                # People retype "[case c-000123]": ids are case-sensitive, generated ones upper.
                case = ev.case_by_id(case_id) or ev.case_by_id(case_id.upper())
                # A case number is guessable: only a participant may thread by it.
                if case is not None and ev.is_participant(case.case_id):
                    return Hit(case, match)
                if case is not None:
                    ev.trace.append(f"  {case_id} named, but the sender is not a participant")
        return None

    def by_subject_ref(self, ev: Evidence) -> Hit | None:
        return self._by_case_ref(ev, iter(subject.variants(ev.subject)), "subject-ref")

    def by_body_ref(self, ev: Evidence) -> Hit | None:
        return self._by_case_ref(ev, iter(ev.unquoted_texts), "body-ref")

    def _external_refs(self, ev: Evidence, rule: ExternalRefRule,
                       pattern: re.Pattern[str]) -> Iterator[str]:
        texts: list[str] = []
        if rule.search_subject:
            texts.extend(subject.variants(ev.subject))
        if rule.search_body:
            texts.extend(ev.unquoted_texts)
        for text in texts:
            for found in pattern.finditer(text):
                ref = (found.group(1) if pattern.groups else found.group(0)).strip()
                if ref:
                    yield f"{rule.name}:{ref}"

    def _external_keys(self, ev: Evidence) -> Iterator[str]:
        """This mail's distinct external references (of rules whose sender matches), bounded."""
        seen: set[str] = set()
        for rule, pattern, senders in self._external:
            if rule.sender and not (ev.sender and senders.matches(ev.sender)):
                continue
            for key in self._external_refs(ev, rule, pattern):
                if key not in seen:
                    seen.add(key)
                    yield key
                    if len(seen) >= MAX_EXTERNAL_REFS:
                        return

    def by_external_ref(self, ev: Evidence) -> Hit | None:
        for key in self._external_keys(ev):
            case = ev.case_by_alias(AliasKind.EXTERNAL, key)
            if case is not None:
                return Hit(case, "external-ref")
            if key not in ev.new_external:
                ev.new_external.append(key)
        return None

    def new_vendor_ticket(self, ev: Evidence) -> bool:
        """Whether this mail carries a reference no case holds of a rule that names its
        senders (`ExternalRefRule.sender`): a ticket system the sysadmin named, whose first
        notice of a ticket opens a case though it is marked automatic. A rule for any sender
        opens none so: anyone's automatic mail may hold a number of its shape."""
        return any(key.partition(":")[0] in self._vendor_rules for key in ev.new_external)

    def note_external_refs(self, ev: Evidence) -> None:
        """First sight maps a reference to the case, also when another strategy found it
        (another system's answer to our mail threads by In-Reply-To, its updates do not)."""
        if not self._external_on:
            return
        for key in self._external_keys(ev):
            if key not in ev.new_external and ev.reader.find(AliasKind.EXTERNAL, key) is None:
                ev.new_external.append(key)

    def subject_key(self, subject_text: str) -> str:
        return subject.normalise(subject_text, self._tag)

    def by_subject_match(self, ev: Evidence) -> Hit | None:
        key = self.subject_key(ev.subject)
        if not key or ev.sender is None or ev.author is None:
            return None
        hit = ev.reader.find(AliasKind.SUBJECT, subject_participant_key(key, ev.author))
        if hit is None or ev.now - hit.recorded > self._subject_window:
            return None
        case = ev.case_by_id(hit.case_id)
        if case is None or not ev.is_participant(case.case_id):
            return None
        return Hit(case, "subject-match")

    def by_bounce(self, ev: Evidence) -> Hit | None:
        """A report (DSN, read receipt) of our mail, by the header fields it returns. A notice
        of the mail system without a report at its top (`autoreply.is_delivery_notice`) is
        read so too: MDaemon attaches the returned mail to multipart/mixed, a gateway wraps a
        DSN in it; qmail (and Yahoo) copy it into the text after a marker line. Other mail
        under the null sender is read for the mail it attaches (a carrier's error notice in a
        language and format of its own: the null sender is the mail system's or a
        responder's, RFC 5321 §4.5.5), and so is postmaster@'s under a sender of its own (the
        mail system's address, RFC 5321 §4.5.1). A provider's feedback without a report
        (`feedback.provider`) too: a JMRP complaint by the copy of our mail it attaches, an
        SES notification by SNS by the fields of our mail its JSON names. Other mail's body
        is not read here."""
        signals = ev.signals
        if signals.quiet:
            return None  # most mail: nothing says it is a report or the mail system's
        report = signals.report_type is not None  # `mime.is_report`
        notice = not report and autoreply.is_delivery_notice(ev.msg, signals)
        provider = "" if report or notice else signals.provider
        if provider == feedback.SNS:
            found = feedback.ses_notice(ev.msg, ev.tree)
            return self._bounce_part(ev, found.returned) if found is not None else None
        if not (report or notice or provider or self._may_attach_returned_mail(ev)):
            return None
        top = ev.top
        returned = bodytext.iter_parts_of_type(
            top.content_type, top.cte, ev.msg.body, budget=self.scan_budget,
            top_disposition=top.disposition, tree=ev.tree,
        )
        attached = False
        for part in returned:
            attached = attached or part.content_type in bodytext.RETURNED_MESSAGE_TYPES
            hit = self._bounce_part(ev, part.data)
            if hit is not None:
                return hit
        # A report that attaches no returned message may copy its header into its text, as
        # Exchange Online does ("Original message headers:"), when it returns no attachment.
        if not (notice or (report and not attached)):
            return None
        copy = bodytext.returned_copy(top.content_type, top.cte, ev.msg.body, self.scan_budget,
                                      top_disposition=top.disposition, tree=ev.tree)
        return self._bounce_part(ev, copy) if copy else None

    def _may_attach_returned_mail(self, ev: Evidence) -> bool:
        """Whether other mail under the null sender (or from postmaster@) may attach the mail
        it returns, told by its header fields alone: a body that can hold an attachment
        (multipart, but for alternatives; a message), from no auto-responder (RFC 3834 §3.3:
        its out-of-office names what it answers in its Subject). Else its body is not read here: an
        out-of-office under the null sender whose Subject holds our token is resolved by its
        header fields, and the milter skips its body."""
        # The null sender first (read with the signals), and the Content-Type (`ev.top` reads
        # all MIME fields) is then looked at only for the few that come under it. postmaster@
        # under a sender of its own is the mail system too (InterScan MSS, a gateway whose
        # notice has a subject in its own language and the mail attached).
        signals = ev.signals
        if not (signals.null_sender or signals.postmaster):
            return False
        kind = mime.media_type(ev.top.content_type)
        if not (kind.startswith(("multipart/", "message/")) and kind != "multipart/alternative"):
            return False
        return autoreply.classify_auto(ev.msg, self.is_ours, signals) != autoreply.AUTO_REPLIED

    def _bounce_part(self, ev: Evidence, data: bytes) -> Hit | None:
        """The bounced mail's case, from the header fields it returned: its own Message-ID
        (a read receipt's Original-Message-ID), then the signed tokens (Subject, anchors),
        then the IDs of the mail it answered. The parent's IDs come last: a mail that moved
        the conversation to another case (or to a split case's child) answers a mail of the
        old one. A Message-ID our mail carried for two cases names the newer
        (`_reused_message_id`)."""
        head = data.split(b"\n\n", 1)[0].split(b"\r\n\r\n", 1)[0]
        fields: dict[str, list[str]] = {}
        for found in _RETURNED_FIELD.finditer(head):
            fields.setdefault(found.group(1).decode("ascii").lower(), []).append(
                found.group(2).decode("utf-8", "surrogateescape"))
        parents = [mid for name in ("in-reply-to", "references") for value in fields.get(name, ())
                   for mid in msgid.id_list(value, self._limit)]

        def tokens() -> Iterator[str]:
            return self._header_tokens(
                fields.get("subject", []),
                (v for name in ("in-reply-to", "references") for v in fields.get(name, ())))

        for mid in (m for name in _RETURNED_ID_FIELDS for v in fields.get(name, ())
                    for m in msgid.id_list(v, 1)):
            case = ev.case_by_alias(AliasKind.MESSAGE, mid)
            if case is not None:
                return Hit(self._reused_message_id(ev, case, fields, tokens) or case, "bounce")
        case = ev.case_by_tokens(tokens())
        if case is not None:
            return Hit(case, "bounce")
        return _first_hit((ev.case_by_alias(AliasKind.MESSAGE, m) for m in parents), "bounce")

    def _reused_message_id(self, ev: Evidence, by_id: CaseRecord, fields: dict[str, list[str]],
                           tokens: Callable[[], Iterator[str]]) -> CaseRecord | None:
        """The case of the returned mail's signed token, where its Message-ID names another
        case none of whose participants the mail went to: our mail carried that Message-ID
        for two cases (an app's template with a fixed Message-ID, a client's resend to
        another customer), and its record names the newer. The token's case must have one of
        the returned recipients (To, Cc) as a participant: the case the bounced mail was
        sent for. Our mail's recipients are its case's participants; a Subject our token is
        no sign of (DKIM-signed mail left unstamped keeps the tag of the mail it answers)
        names a case of the same customer, and the Message-ID's case keeps the report."""
        people = [a for a in header_addresses(fields.get("to", []) + fields.get("cc", []))
                  if "@" in a and not self.is_ours(a)][:MAX_PARTICIPANTS]
        if not people or any(ev.has_participant(by_id.case_id, a) for a in people):
            return None
        case = ev.case_by_tokens(tokens())
        if case is None or case.case_id == by_id.case_id or not any(
                ev.has_participant(case.case_id, a) for a in people):
            return None
        ev.trace.append(f"  the returned Message-ID names {by_id.case_id}, which the mail's "
                        f"recipients are no participants of; its token names {case.case_id}, "
                        "theirs: a Message-ID our mail carried for both")
        return case
