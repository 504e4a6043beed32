"""The one entry point: `Engine.process(message)` composes core, index and settings.

The milter adapter and `casethread filter` both call it, so what the CLI prints is what the MTA
does. The core decides and only reads the index; the writes happen here, in an order that keeps
a crash between them harmless: a case exists before anything points at it.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from dataclasses import replace
from functools import partial

from .core import (
    autoreply,
    dkim,
    inbound,
    mail_lists,
    mime,
    msgid,
    outbound,
    rules,
    stamp,
    token,
)
from .core.addresses import AddressMatcher, cached_matches, envelope_address, header_addresses
from .core.case_headers import CaseHeaderNames, refusal, strip_ours
from .core.decision import Decision, Step
from .core.direction import Classifier
from .core.edits import Edit
from .core.frozen import frozen
from .core.message import Message
from .core.model import Alias, AliasKind, CaseRecord, CaseState, CounterBump, Direction
from .core.resolve import (
    MAX_PARTICIPANTS,
    Evidence,
    Found,
    Hit,
    Resolver,
    adds_people,
    participant_key,
    subject_participant_key,
)
from .core.routing import Route, Router
from .core.settings import Settings
from .core.stamp import Splice
from .core.store import CaseChange, CaseIndex, CaseLookup, Expect, StaleDecision
from .core.token import Keyring

Clock = Callable[[], float]
# `body_wanted` for a body that is rewritten: every byte, however large (the milter spools it).
ALL_OF_IT = 1 << 62
# Header sections up to this size are resolved at end of headers too, to spare the body: a
# hostile one (a 1 MB Subject) is not resolved twice.
DRY_RUN_HEADERS = 64 << 10
# A decision another writer made stale is made again on what is there now; the last of these
# is written without the check: a duplicate case is better than mail without one.
MAX_DECISIONS = 4
# The app's X-Case-State values that end a case (a merged ticket's do not end its survivor).
_ENDS = frozenset({CaseState.RESOLVED, CaseState.CLOSED})


@frozen
class BodyPlan:
    """What the engine needs of a mail's body, known by its header fields (`body_wanted`)."""

    room: int  # bytes of the body to keep
    found: Found | None = None  # inbound mail its header fields resolved: for `process`


def _root_holder(ev: Evidence, hit: Hit | None = None) -> CaseRecord | None:
    """The case that holds the mail's Outlook root (None for mail without one): the case the
    mail named when `thread-index` found it, else the one the index records it for."""
    if ev.thread_root is None:
        return None
    if hit is not None and hit.match == "thread-index":
        return hit.case
    return ev.case_by_alias(AliasKind.THREAD_ROOT, ev.thread_root.hex())


def _sender_known(ev: Evidence, named: CaseRecord, cases: list[CaseRecord]) -> bool:
    """Whether the sender is a participant of the case the mail named or of one it goes to:
    a merge, split or parent redirect must not make its own customer `unknown`."""
    asked = set()  # each case once (a loop: a dictionary and generators cost more here)
    for case in (named, *cases):
        if case.case_id not in asked:
            if ev.is_participant(case.case_id):
                return True
            asked.add(case.case_id)
    return False


def _flood_sender(ev: Evidence, auto: str) -> str:
    """Whom an inbound mail counts against for the flood limit ("" nobody): its author
    (`Evidence.author`: the From, apart for each address a Reply-To names: a web form's
    visitors, a list's members). Automatic mail but a list's counts against its From
    whatever its Reply-To: a notification system names a reply address of its own there per
    thread or per message (GitLab's `gitlab+KEY@`, Discourse's `replies+KEY@`), and its
    loop would never be one; without a From the parser reads (none, a garbled one), against
    its envelope sender: a loop must not pass for want of a From. Not a person's mail: a
    web form may send every visitor's question under one envelope sender, with the
    visitor's name as From. The null sender's mail counts against nobody."""
    if auto == autoreply.NO or ev.sender in ev.list_addresses:
        return ev.author or ""
    return ev.sender or envelope_address(ev.msg.envelope.mail_from)


def _subject_people(ev: Evidence, participants: list[str]) -> list[str]:
    """Whom `subject-match` records an inbound mail's subject under, of its `participants`:
    its author (`Evidence.author`) and those it went to (To, Cc), who may write again under
    its subject. Not an address only its Reply-To names: a stranger's mail with a customer's
    Reply-To and the subject of the customer's case would take the customer's next mail of
    that subject; nor a From a Reply-To splits, a web form's: its next visitor who leaves
    the address field empty would join this one's case. Our own list's copy of a member's
    mail is recorded for the member (`Evidence.relayed_author`), as their own mail is."""
    people = []
    if (ev.relayed_author or ev.sender) in participants and ev.author:
        people.append(ev.author)
    went_to = set(header_addresses(ev.msg.get_all("To") + ev.msg.get_all("Cc")))
    people += [a for a in participants if a in went_to and a not in people]
    return people


def _retried(attempt: int) -> str:
    return (f"decided again (attempt {attempt}): another message or the command line wrote "
            "to its cases meanwhile")


def _with_followup(followup: str, now: int) -> CaseChange:
    # `updated` moves: an import --merge keeps the newer record, and this one is newer.
    return lambda current: replace(current, followup=followup, updated=now)


class _ReadsKept:
    """A lookup that keeps the cases it returned: what the case rules decided on, for the
    write to check (`Expect`)."""

    def __init__(self, reader: CaseLookup) -> None:
        self._reader = reader
        self.cases: dict[str, CaseRecord] = {}

    def get_case(self, case_id: str) -> CaseRecord | None:
        case = self._reader.get_case(case_id)
        if case is not None:
            self.cases.setdefault(case_id, case)
        return case


class Engine:
    def __init__(
        self,
        settings: Settings,
        index: CaseIndex,
        keyring: Keyring,
        clock: Clock = time.time,
        hostname: str | None = None,
        explain: bool = False,
    ) -> None:
        self.settings = settings
        # `filter --explain`: a duplicate's trace also shows what its strategies find (a reply
        # saved from a mailbox has been recorded: it is always a duplicate of itself).
        self._explain = explain
        self.index = index
        self.keyring = keyring
        self._clock = clock
        self._id_domain = outbound.fallback_domain(
            hostname or socket.getfqdn() or "localhost.localdomain", settings.inbound.addresses)
        self._classifier = Classifier(settings)
        self._names = CaseHeaderNames(settings.headers.prefix)
        self._resolver = Resolver(settings, keyring)
        notice_senders = settings.inbound.notice_senders
        # Who sends the mail filters' notices (`inbound.notice_senders`); None: nobody named.
        # Asked of every inbound mail's From, as `is_ours` is: its answers are kept alike.
        self._notices = cached_matches(AddressMatcher(notice_senders)) if notice_senders else None
        self._router = Router(settings.routing)
        self._subject_match = "subject-match" in settings.inbound.strategies

    def classify(self, msg: Message, direction: Direction | None = None) -> Direction:
        """The mail's direction (`msg` holds its header fields: at end of headers); a given
        `direction` (`filter --direction`) is only checked for a redirect, as `process` does."""
        if direction is None:
            direction = self._classifier.classify(msg.envelope)
        # Only outbound mail may be a redirect: other mail is asked nothing more.
        return direction if direction is not Direction.OUTBOUND else (
            self._unless_redirect(msg, direction))

    def _unless_redirect(self, msg: Message, direction: Direction) -> Direction:
        """Outbound mail that is a redirect (Thunderbird's "Redirect", mutt's bounce; RFC 5322
        §3.6.6: resent unchanged, Resent-* fields on top) is no mail of ours to stamp: to a
        support address it is inbound (an agent redirecting a customer's mail to the
        helpdesk), else it passes as mail of neither direction."""
        if direction is not Direction.OUTBOUND or not outbound.is_resent(msg):
            return direction
        return Direction.INBOUND if self._classifier.to_support(msg.envelope) else Direction.OTHER

    def body_wanted(self, msg: Message, direction: Direction) -> BodyPlan:
        """How many body bytes the engine needs for this mail, known by its header fields (the
        milter buffers no more, and tells the MTA to skip the rest).

        Inbound mail whose header fields name its case before any strategy would read the body
        (with the default order: a valid token in the Subject) needs none, and the plan holds
        that case for `process`. Other inbound mail is read up to `inbound.read_limit` (the
        milter spools a big body to a file): its scan reads at most `scan_budget` decoded bytes
        of text, but the text may come after big attachments (a phone puts the photo above the
        quote) or quoted-printable growth. Outbound mail is read whole when it is stamped,
        else up to `inbound.read_limit` too: its case may be named only by a token quoted in
        its body (an agent's reply whose client dropped the Subject tag).
        """
        if direction is Direction.INBOUND:
            size = 0  # a loop, not sum() of a generator: resumed for each of 20-40 fields
            for h in msg.headers:
                size += len(h.name) + len(h.value)
            if size <= DRY_RUN_HEADERS:
                ev = self._resolver.evidence(msg, self.index, int(self._clock()))
                # The signals read here are the classifier's at end of message (`Found`).
                if not autoreply.reads_body(msg, self._resolver.is_ours, ev.signals):
                    with self.index.snapshot():
                        found = self._resolver.found_by_headers(ev)
                    if found is not None:
                        return BodyPlan(0, found)
            return BodyPlan(self.settings.inbound.read_limit)
        if direction is Direction.OUTBOUND:
            stamping = self.settings.stamp.html or self.settings.stamp.text
            return BodyPlan(ALL_OF_IT if stamping else self.settings.inbound.read_limit)
        return BodyPlan(0)

    def process(self, msg: Message, direction: Direction | None = None,
                found: Found | None = None) -> Decision:
        """Decide and record; raises on internal errors (the caller is the error boundary).
        `direction`: as `classify` gave it (None: classified here). `found`: what
        `body_wanted` found for this inbound mail's header fields at end of headers (the same
        fields as `msg`'s), decided on instead of resolving them again."""
        if direction is None:
            direction = self.classify(msg)
        refused = refusal(msg, self._names)
        if refused is not None:
            return Decision(direction, notes=("too-many-case-fields",), refused=refused)
        if direction is Direction.OTHER:  # no index read: the failure policy comes here too
            # A redirect's X-Case-* fields are those of the copy it resends, not an app's.
            return self._neither(msg, ("resent",) if outbound.is_resent(msg) else ())
        if direction is Direction.OUTBOUND:
            return self._decided(self._outbound, msg)
        if found is None:
            return self._decided(self._inbound, msg)
        # The milter skipped this mail's body: nothing slow happens between the decision's
        # reads, which share one view of the index (a view held while a body is parsed or
        # stamped would hold back every write that needs the readers drained).
        with self.index.snapshot():
            return self._decided(partial(self._inbound, found=found), msg)

    def _first_delivery(self, ev: Evidence, reused: Found | None, walked: int) -> Hit | None:
        """What the strategies find for a duplicate (`filter --explain`), traced below its
        `duplicate:` line: the walk of the header pass (`reused`: its `walked` lines, after the
        `auto:` line) when it found the case: those lines move there, not walked again and
        shown twice."""
        if reused is None:
            return self._resolver.resolve(ev)
        ev.trace += ev.trace[1:1 + walked]
        del ev.trace[1:1 + walked]
        return reused.hit

    @staticmethod
    def _decided(decide: Callable[[Message, int], Decision], msg: Message) -> Decision:
        """`decide(msg, attempt)`, again while another writer makes its decision stale: before
        the last attempt, a write checks that what its decision read still holds, else raises
        `StaleDecision` having written nothing."""
        for attempt in range(1, MAX_DECISIONS):
            try:
                return decide(msg, attempt)
            except StaleDecision:
                continue
        return decide(msg, MAX_DECISIONS)

    def _neither(self, msg: Message, notes: tuple[str, ...] = ()) -> Decision:
        """Mail of neither direction: passed on without our fields. Noted: an app whose
        X-Case-ID vanishes (it sent through a path that is not outbound) shows why in the log
        line. No count in it: notes are metric labels too."""
        removed = tuple(strip_ours(msg, self._names))
        if removed:
            notes += ("case-fields-removed",)
        return Decision(Direction.OTHER, edits=removed, notes=notes)

    def unchanged(self, msg: Message) -> Decision:
        """What the failure policy (on_error=accept) leaves of a message the engine failed on:
        as for mail of neither direction, nothing but the forged X-Case-* fields removed
        (downstream rules trust them), or refused when it carries more than can be removed."""
        return self.process(msg, Direction.OTHER)

    # -- shared -------------------------------------------------------------------------------

    def _aliases(self, msg: Message, case_ids: list[str], message_id: str | None,
                 root: bytes | None, notes: list[str], external: list[str] | None = None,
                 ours: bool = False, people: bool = True, named: str | None = None,
                 ev: Evidence | None = None) -> list[Alias]:
        """What names these cases from now on: this mail's Message-ID, thread root and external
        references (for the `named` case, else the first), its people (and subject) for every
        case unless not `people` (`adds_people`; `ev`: inbound mail's evidence, whose list
        addresses are read once per message and whose author `subject-match` records,
        `_subject_people`); `notes` gets `participants-capped` when some people were left out."""
        first = named or case_ids[0]
        aliases = []
        if message_id:
            aliases.append(Alias(AliasKind.MESSAGE, message_id, first))
        if root is not None:
            aliases.append(Alias(AliasKind.THREAD_ROOT, root.hex(), first))
        if external:
            aliases += [Alias(AliasKind.EXTERNAL, key, first) for key in external]
        lists = ev.list_addresses if ev is not None else None
        author = ev.relayed_author if ev is not None else None
        addresses = self._resolver.participants(msg, ours, lists, author) if people else []
        if len(addresses) > MAX_PARTICIPANTS:
            addresses = addresses[:MAX_PARTICIPANTS]
            if "participants-capped" not in notes:  # an index write may be tried again
                notes.append("participants-capped")
        subject_key = (
            self._resolver.subject_key(msg.get("Subject") or "")
            if self._subject_match and addresses else ""
        )
        # Per person: another sender's mail with the same subject must not hide it. Outbound
        # mail's people are its recipients, who answer under its subject.
        subject_people: list[str] = []
        if subject_key:
            subject_people = addresses if ev is None else _subject_people(ev, addresses)
        # Loops, not comprehensions (each a function call on Python 3.11): a mail has a
        # person or two, and one case.
        for case_id in case_ids:
            for address in addresses:
                aliases.append(Alias(AliasKind.PARTICIPANT, participant_key(case_id, address),
                                     case_id))
            for person in subject_people:
                aliases.append(Alias(AliasKind.SUBJECT,
                                     subject_participant_key(subject_key, person), case_id))
        return aliases

    # -- inbound ------------------------------------------------------------------------------

    def _inbound(self, msg: Message, attempt: int, found: Found | None = None) -> Decision:
        now = int(self._clock())
        # What end of headers found is decided on once: a decision made stale is made afresh.
        reused = found if attempt == 1 else None
        ev = (reused.evidence.with_body(msg, now) if reused is not None
              else self._resolver.evidence(msg, self.index, now))
        walked = len(ev.trace) if reused is not None else 0  # the header pass's walk, traced
        if attempt > 1:
            ev.trace.append(_retried(attempt))
        # A delivery report's body is parsed once, for this and for the bounce strategy.
        auto, why = autoreply.classify_auto_detail(msg, self._resolver.is_ours,
                                                   lambda: ev.tree, self._notices, ev.signals)
        # Above a walk the header pass traced: `--explain` shows one order, whichever pass walked.
        ev.trace.insert(len(ev.trace) - walked,
                        ("auto: {} ({})", (auto, why)) if why else ("auto: {}", (auto,)))
        message_id = msg.get_filled("Message-ID")  # read once: for the log line's note too
        own_id = msgid.first_id(message_id)
        duplicate = ev.case_by_alias(AliasKind.MESSAGE, own_id) if own_id else None
        # A copy of this mail recorded meanwhile makes it a duplicate.
        unrecorded = ((AliasKind.MESSAGE, own_id),) if own_id else ()
        checking = attempt < MAX_DECISIONS
        route = self._router.route(msg)
        if duplicate is not None:
            # The cases the first copy went to, as they are now: every child of a split but
            # a closed one (no case is opened for a copy), or the one case it names.
            reached = [t.case for t in rules.apply(
                duplicate, self.index, automatic=True, now=now,
                reopen_within=self.settings.cases.reopen_within)]
            cases = [c for c in reached if c.state is not CaseState.CLOSED] or reached
            ev.trace.append(f"duplicate: this Message-ID is already recorded for "
                            f"{duplicate.case_id} -> {', '.join(c.case_id for c in cases)}")
            if self._explain:
                ev.trace.append("as a first delivery (read only; the copy keeps the case above):")
                first = self._first_delivery(ev, reused, walked)
                ev.trace.append(f"as a first delivery: -> {first.case.case_id} by {first.match}"
                                if first else "as a first delivery: no match: a new case")
            else:
                first = self._resolver.bounce_hit(ev)
            # Not counted against the flood limit: a copy to a second support address, or a
            # redelivery, is not one more mail from its sender. A loop if its sender is over
            # the limit without it, on the counter its first copy was counted on (a report
            # the bounce strategy matched: per sender and case): the copies agree unless
            # the sender's other mail (or the window's end) came between them.
            _, loop = self._flood(ev, first, auto, now, counted=False)
            # Our own outbound mail coming back (a forward, a list) may name a case that no
            # inbound mail routed yet: show this mail's route, keep nothing.
            verdict = inbound.Verdict(
                tuple(inbound.CaseOutcome(c.case_id, c.state.value, c.queue or route.queue)
                      for c in cases),
                "duplicate", auto, duplicate=True, loop=loop,
                sender_known=_sender_known(ev, duplicate, cases),
            )
            return self._inbound_decision(msg, verdict, ev, message_id)
        hit = reused.hit if reused is not None else self._resolver.resolve_inbound(ev)
        bumps, loop = self._flood(ev, hit, auto, now)
        # A list's copy of a person's reply to our mail moves the case like the reply.
        automatic = loop or rules.is_automatic(auto, hit.match if hit else "none")
        if hit is not None and not automatic and ev.from_ours:
            # Our own mail come back (an agent's answer sent another way, Cc support@; a
            # script writing as support@): it threads, but is no customer's word on the case.
            automatic = True
            ev.notes.append("from-our-address")
            ev.trace.append("rules: mail from our own address names nobody else: it changes "
                            "no case's state and routes nothing")
        if hit is None:
            sender_known = None
            # A ticket system the sysadmin named in `inbound.external_refs` marks its
            # notifications automatic (ServiceNow: Precedence: bulk, Auto-Submitted): its
            # first notice of a ticket no case knows opens one, as Znuny's
            # ExternalTicketNumberRecognition does; its later notices join it by the number.
            # Never an out-of-office, a bounce or a loop.
            vendor_ticket = (automatic and not loop
                             and auto in (autoreply.AUTO_GENERATED, autoreply.BULK)
                             and self._resolver.new_vendor_ticket(ev))
            if vendor_ticket:
                automatic = False
                ev.trace.append(f"{auto} mail of an external_refs sender with a new reference "
                                f"({', '.join(ev.new_external)}): new case")
            else:
                ev.trace.append("automatic mail opens no case" if automatic
                                else "no match: new case")
            match = "none" if automatic else "new"
            if automatic:
                outcomes = []
                self.index.record((), now, bumps)
            else:
                # The case, this mail's aliases and its sender's count: one commit.
                case = self.index.create_case(
                    now, queue=route.queue, bumps=bumps,
                    aliases=lambda new: self._message_aliases(msg, ev, own_id, [new.case_id],
                                                              root=ev.thread_root),
                    thread_root=outbound.new_case_root(ev.thread_root, now),
                    expect=Expect(unrecorded + self._new_keys(ev)) if checking else None,
                    number_above=ev.lost_number,
                )
                outcomes = [inbound.CaseOutcome(case.case_id, "new", case.queue)]
        else:
            if auto != autoreply.NO and not automatic:
                ev.trace.append(f"rules: {auto} mail that answers our mail counts as a person's")
            reads = _ReadsKept(self.index)
            targets = rules.apply(hit.case, reads, automatic=automatic, now=now,
                                  reopen_within=self.settings.cases.reopen_within)
            expect = Expect(unrecorded, (hit.case, *reads.cases.values())) if checking else None
            reached = []
            for t in targets:
                reached.append(t.case)
                ev.trace.append(("rules: {.case.case_id} -> {.case.case_id} {}",
                                 (hit, t, t.action)))
            sender_known = _sender_known(ev, hit.case, reached)
            # Only automatic mail can be the mail system's report (ordinary mail pays nothing).
            mail_system = auto != autoreply.NO and autoreply.from_mail_system(
                msg, auto, self._notices, ev.signals)
            people = adds_people(hit.match, sender_known, mail_system)
            if mail_system:
                ev.trace.append("participants: none added: a report of the mail system")
            elif not people:
                ev.trace.append(f"participants: none added: the sender is not one of the "
                                f"case's, and {hit.match} is not our token")
            # Automatic mail (a bounce or an out-of-office that follows our mail within
            # seconds) routes nothing: the customer's first own reply does.
            outcomes = self._carry_out(msg, ev, own_id, targets, now, route, bumps,
                                       routes=not automatic, expect=expect, people=people,
                                       hit=hit)
            match = hit.match
        verdict = inbound.Verdict(tuple(outcomes), match, auto, loop=loop,
                                  sender_known=sender_known,
                                  token_failures=ev.token_failures)
        return self._inbound_decision(msg, verdict, ev, message_id)

    def _new_keys(self, ev: Evidence) -> tuple[tuple[AliasKind, str], ...]:
        """What else a new case is looked up by, found by nobody: a mail of the same external
        ticket or Outlook conversation decided meanwhile opened a case for it."""
        keys = tuple((AliasKind.EXTERNAL, key) for key in ev.new_external)
        if ev.thread_root is not None and self._resolver.uses("thread-index"):
            keys += ((AliasKind.THREAD_ROOT, ev.thread_root.hex()),)
        return keys

    def _inbound_decision(self, msg: Message, verdict: inbound.Verdict,
                          ev: Evidence, message_id: str | None) -> Decision:
        """`message_id`: the mail's first filled Message-ID field (`Message.get_filled`)."""
        edits = inbound.edits(self._names, strip_ours(msg, self._names), verdict)
        notes: tuple[str, ...] = () if message_id else ("no-message-id",)
        # A token that failed shows in the header and also here: a retired key's replies
        # open new cases, and only the log line is read across all mail.
        # One loop, not a comprehension per field (each a function call on Python 3.11):
        # every inbound mail makes one.
        case_ids, states, related = [], [], []
        for case in verdict.cases:
            case_ids.append(case.case_id)
            states.append(case.state)
            if case.related:
                related.append(case.related)
        # Every field in its place (keyword arguments to a class cost a dictionary).
        return Decision(
            Direction.INBOUND, tuple(case_ids), verdict.match, ",".join(states), tuple(edits),
            notes + ev.log_notes,
            (),  # body_splices: inbound mail's body is never replaced
            tuple(ev.trace), verdict.auto,
            "",  # refused: not refused (refusal returns before resolution)
            tuple(related),
        )

    def _flood(self, ev: Evidence, hit: Hit | None, auto: str, now: int,
               counted: bool = True) -> tuple[list[CounterBump], bool]:
        """What this message counts against the flood limit, and whether it is over it. Mail
        counts against its sender; a report the bounce strategy matched (a bounce, a delay
        warning, a read receipt of our mail) against its sender and that case: a provider's
        shared bounce address (mailer-daemon@googlemail.com) reports on many cases an hour,
        a loop returns the same case's mail again and again. It is counted at the end, with
        the message's other writes (one commit): senders racing each other may pass the
        limit by the messages in flight, a sequence of them never does. A mail not `counted`
        (a duplicate) is over it when its sender is without it."""
        sender = _flood_sender(ev, auto)
        if not sender:
            return [], False
        about = f" about {hit.case.case_id}" if hit is not None and hit.match == "bounce" else ""
        bump = CounterBump(f"flood {sender}{about}", self.settings.inbound.flood.window)
        count = self.index.next_count(bump.key, now, bump.window) - (0 if counted else 1)
        loop = count > self.settings.inbound.flood.limit
        if loop:
            who = sender.replace("\n", " for Reply-To ").strip()
            ev.trace.append(f"loop: {who} sent more than the flood limit{about}"
                            + ("" if counted else " (this copy not counted)"))
        return ([bump] if counted else []), loop

    def _carry_out(self, msg: Message, ev: Evidence, own_id: str | None,
                   targets: list[rules.Target], now: int, route: Route,
                   bumps: list[CounterBump], routes: bool, expect: Expect | None,
                   people: bool, hit: Hit) -> list[inbound.CaseOutcome]:
        """What the message does to its cases (`targets` of the case it named, `hit`), recorded
        with its aliases and its sender's count in one commit. Unless the mail `routes`, no
        case changes queue (one without a queue yet shows this mail's route in its header,
        without keeping it). Its `people` join the cases (a follow-up too: it continues the
        case the mail named) or nobody."""
        if targets[0].action is rules.Action.NEW_RELATED:  # then the only target (`rules`)
            # A follow-up keeps its case's queue, as an existing case does.
            earlier = targets[0].case
            queue = route.queue if route.override or not earlier.queue else earlier.queue
            # The earlier case names its follow-up in the same commit: the reply's later
            # siblings go there (`rules`), and a sibling decided meanwhile is decided again.
            # A root a case holds stays there, as below: the earlier case's leads here by
            # that link, and another's is no way into the follow-up.
            holder = _root_holder(ev, hit)
            root = ev.thread_root if holder is None else None
            case = self.index.create_case(
                now, queue=queue, bumps=bumps,
                thread_root=outbound.new_case_root(
                    self._followup_root(ev, holder, hit, earlier), now),
                aliases=lambda new: self._message_aliases(msg, ev, own_id, [new.case_id],
                                                          people, root),
                changes=lambda new: [(earlier.case_id, _with_followup(new.case_id, now))],
                expect=expect, number_above=ev.lost_number, follows=earlier.case_id,
            )
            return [inbound.CaseOutcome(case.case_id, "new", case.queue, earlier.case_id)]
        case_ids, changes = [], []
        for t in targets:
            case_ids.append(t.case.case_id)
            changes.append((t.case.case_id, self._change(t, now, route if routes else None)))
        # A mail the rules sent to several cases (a split's children) is recorded for the case
        # it named: what answers it, or a copy of it, is sent to them all again, not to the
        # first child alone. Its Outlook root only when no case holds it: held by the case it
        # named, or by a case merged into one it goes to, the rules lead from there (recorded
        # again for the survivor, the root would stay behind when a wrong merge is moved);
        # held by another case, re-pointing it would send that case's next Outlook reply,
        # which may carry nothing but its Thread-Index, here, and anyone who saw a customer's
        # Outlook mail can put its root into a mail of their own case.
        after = self.index.record(
            self._aliases(msg, case_ids, own_id,
                          ev.thread_root if _root_holder(ev, hit) is None else None,
                          ev.notes, ev.new_external, people=people,
                          named=hit.case.case_id if len(targets) > 1 else None,
                          ev=ev),
            now, bumps, changes, expect=expect)
        outcomes = []
        for target in targets:
            case = after.get(target.case.case_id, target.case)
            reopened = target.action is rules.Action.REOPEN and case.state is CaseState.OPEN
            # str() of the StrEnum is its value, without the enum's `value` property.
            state = "reopened" if reopened else str(case.state)
            outcomes.append(inbound.CaseOutcome(case.case_id, state, case.queue or route.queue))
        return outcomes

    def _followup_root(self, ev: Evidence, holder: CaseRecord | None, hit: Hit,
                       earlier: CaseRecord) -> bytes | None:
        """The mail's Outlook root as the root of the follow-up it opens of `earlier`: when no
        case holds it (`holder`), or the case the mail named or `earlier` (or a case merged
        into it) does, the customer's own conversation, which our answers then continue in
        their Outlook. Not another case's: our answers in the follow-up record its root, and
        would move that case's conversation here. (The follow-up itself records no held root,
        as no inbound mail does: `_carry_out`.)"""
        if (holder is None or holder.case_id in (hit.case.case_id, earlier.case_id)
                or rules.survivor(holder, self.index).case_id == earlier.case_id):
            return ev.thread_root
        return None

    @staticmethod
    def _change(target: rules.Target, now: int, route: Route | None) -> CaseChange:
        def change(current: CaseRecord) -> CaseRecord | None:
            changed = rules.transition(rules.Target(current, target.action), now)
            # A case opened by outbound mail has no queue yet: its first inbound mail routes it.
            if changed is not None and route is not None and (
                    route.override or not changed.queue):
                changed = replace(changed, queue=route.queue)
            return changed

        return change

    def _message_aliases(self, msg: Message, ev: Evidence, own_id: str | None,
                         case_ids: list[str], people: bool = True,
                         root: bytes | None = None) -> list[Alias]:
        """This mail's aliases for a case it opens; its Outlook root only when given (`root`)
        or, for a case opened without a hit, the mail's own."""
        return self._aliases(msg, case_ids, own_id, root, ev.notes, ev.new_external,
                             people=people, ev=ev)

    # -- outbound -----------------------------------------------------------------------------

    def _outbound(self, msg: Message, attempt: int) -> Decision:
        now = self._clock()
        out = self.settings.outbound
        app_id, bad_app_id = outbound.app_case_id(msg, self._names)
        notes: list[str] = ["bad-app-case-id"] if bad_app_id else []
        notes += outbound.repeated_app_fields(msg, self._names)
        trace: list[Step] = [f"app X-Case-ID: {app_id}"] if app_id else []
        if attempt > 1:
            trace.append(_retried(attempt))
        new_case = recorded = named_merged = False
        case: CaseRecord | None
        ev = self._resolver.evidence(msg, self.index, int(now))
        domain = outbound.message_id_domain(msg, out.message_id_domain, self._id_domain)
        message_id = outbound.ensure_message_id(msg, domain, now)
        # Signed before us (an app, or a provider relaying through us): unless told to stamp
        # it all, the signature must still verify; no Message-ID is added where it covers one.
        signed = dkim.signed_fields(msg) if self.settings.stamp.dkim_signed == "keep" else None
        # A Message-ID the signature keeps us from adding is not recorded: no reply names it.
        id_blocked = message_id.edit is not None and signed is not None and "message-id" in signed
        id_edit = None if id_blocked else message_id.edit
        recorded_id = None if id_blocked else message_id.normalised
        if id_blocked:
            notes.append("message-id-not-changed:dkim-signed")

        # A case this mail opens takes its root only when that names no case: it may be
        # another case's that `thread-index` did not take (an agent's Outlook forward of a
        # customer's mail to someone else), and recorded for the new case, that customer's
        # next Outlook reply would go there.
        opening_root = ev.thread_root if _root_holder(ev) is None else None

        def aliases_of(case: CaseRecord, opened: bool = False) -> list[Alias]:
            root: bytes | None = outbound.thread_root_of(
                opening_root if opened else ev.thread_root, case)
            if not opened and self._root_held_elsewhere(ev, case):
                trace.append(f"thread root not recorded for {case.case_id}: "
                             "another case holds it")
                root = None
            return self._aliases(msg, [case.case_id], recorded_id, root, notes, ours=True)

        if app_id is not None:
            new_case = self.index.get_case(app_id) is None
            case = self._app_case(app_id, int(now), trace, notes, opening_root)
            match = "app"
        else:
            hit = self._resolver.resolve(ev, outbound=True)
            if hit is not None:
                case, match = self._outbound_case(ev, hit)
                named_merged = bool(hit.case.merged_into)
            elif out.new_case == "create" and self._may_open_case(msg, notes):
                # The case and this mail's aliases in one commit.
                # The agent's own Outlook root, when the mail has one, is the case's: later
                # answers from the app continue that conversation in the customer's Outlook.
                # A copy of this mail submitted at the same moment (its own Message-ID) is a
                # duplicate: decided again, `resolve` finds the copy's case.
                checking = message_id.edit is None and attempt < MAX_DECISIONS
                case = self.index.create_case(
                    int(now), aliases=lambda new: aliases_of(new, opened=True),
                    thread_root=outbound.new_case_root(opening_root, int(now)),
                    expect=Expect(((AliasKind.MESSAGE, message_id.normalised),)) if checking
                    else None, number_above=ev.lost_number)
                match, new_case, recorded = "new", True, True
            else:
                case, match = None, "none"
            trace += ev.trace
            notes += ev.log_notes
        edits: list[Edit] = []
        splices: tuple[Splice, ...] = ()
        if id_edit is not None:
            edits.append(id_edit)
            notes.append("message-id-added")
        edits += outbound.case_header_edits(msg, self._names, case)
        if case is not None:
            tok = self.keyring.make(case.number)
            edits += self._stamp_headers(msg, case, tok, new_case, domain, now, notes)
            if signed is None:
                splices = self._stamp_body(ev, tok, notes)
            elif self.settings.stamp.html or self.settings.stamp.text:
                notes.append("body-not-stamped:dkim-signed")
            # The app's state change rides in the mail's own commit. Its ticket was merged away
            # when its X-Case-ID, or the case its mail continues (a token), went to a survivor.
            merged = case.case_id != app_id if app_id is not None else named_merged
            state_change = self._app_state_change(msg, int(now), notes, trace, merged)
            changes = [(case.case_id, state_change)] if state_change is not None else []
            if changes or not recorded:
                after = self.index.record([] if recorded else aliases_of(case), int(now),
                                          changes=changes)
                case = after.get(case.case_id, case)
        if signed is not None:
            kept = [e for e in edits if e.name.lower() not in signed]
            notes += [f"{name}-not-changed:dkim-signed"
                      for name in dict.fromkeys(e.name.lower() for e in edits if e not in kept)]
            edits = kept
        return Decision(
            Direction.OUTBOUND,
            (case.case_id,) if case else (),
            match,
            case.state.value if case else "",
            tuple(edits),
            tuple(notes),
            splices,
            tuple(trace),
        )

    def _may_open_case(self, msg: Message, notes: list[str]) -> bool:
        """An agent's out-of-office, read receipt or delivery report (a top-level
        multipart/report) continues a case, never opens one. Only those: helpdesks such as RT
        mark all their mail `Precedence: bulk`. Nor does mail to none but
        `outbound.internal_recipients` (`notes=internal-recipients`), nor a list's or a
        newsletter's (`notes=list-mail`): one case for an announcement would take every
        recipient's reply, one customer's beside another's, and make them all participants."""
        if self._classifier.to_internal_only(msg.envelope):
            notes.append("internal-recipients")
            return False
        if mail_lists.is_list_mail(msg, self._resolver.is_ours):
            notes.append("list-mail")
            return False
        if mime.is_report(msg.get("Content-Type")):
            notes.append("report")
            return False
        if autoreply.classify_auto(msg, self._resolver.is_ours) == autoreply.AUTO_REPLIED:
            notes.append("auto-replied")
            return False
        return True

    def _app_case(self, app_id: str, now: int, trace: list[Step],
                  notes: list[str], root: bytes | None) -> CaseRecord:
        """The case the app's X-Case-ID names (made when unknown, with the mail's Outlook
        `root` when it has one no case holds, as a case an agent's Outlook mail opens: the
        app's next answers continue that conversation); a merged one's survivor, as for
        inbound mail: the app may still name a ticket merged since."""
        named = self.index.create_case(now, case_id=app_id,
                                       thread_root=outbound.new_case_root(root, now))
        case = rules.survivor(named, self.index)
        if case is not named:
            trace.append(f"app X-Case-ID {app_id} is merged into {case.case_id}")
            notes.append("app-case-merged")
        return case

    def _root_held_elsewhere(self, ev: Evidence, case: CaseRecord) -> bool:
        """Whether the mail's own Outlook root is held by another case that keeps it: a live
        one (mail of `case` that carries it, a forward the app moved to a new ticket or a
        reply with another case's tag, must not re-point it, or the customer's next Outlook
        reply, which has nothing but the Thread-Index, would go to `case`), or one merged
        into `case` (the merge leads here already; recorded again for `case`, the root would
        stay behind when a wrong merge is moved). A closed one's root moves on with the
        conversation, to `case`, only when this mail goes to that conversation's people (a
        participant of the closed case) or the closed case's mail goes to `case` anyway (its
        follow-up, its open parent): an agent's Outlook answer continues the Thread-Index of
        the mail it answers, which that mail's sender chose, and another customer's root that
        moved here would send their next Outlook reply into a stranger's case instead of a
        follow-up of their own. Mail without a Thread-Index records its case's own root."""
        holder = _root_holder(ev)
        if holder is None or holder.case_id == case.case_id:
            return False
        live = rules.survivor(holder, self.index)
        if live.case_id == case.case_id or live.state is not CaseState.CLOSED:
            return True
        if any(ev.to_participant_of(c) for c in dict.fromkeys((holder.case_id, live.case_id))):
            return False
        # Where a person's mail to the closed case goes now.
        reached = rules.apply(holder, self.index, automatic=False, now=int(self._clock()),
                              reopen_within=self.settings.cases.reopen_within)
        return all(t.case.case_id != case.case_id for t in reached)

    def _outbound_case(self, ev: Evidence, hit: Hit) -> tuple[CaseRecord, str]:
        """The case an agent's mail continues. A case that hands its replies on (closed, or
        resolved longer ago than `cases.reopen_within`; its token still in the Subject)
        yields to the case of the mail answered: after a customer's reply opened a related
        case, the agent's answer belongs there, or every reply would open another one. Else
        to the case its replies go to now (its open parent, its follow-up): an answer to an
        older mail of the case, filed under it, would sit apart from the conversation its
        customer's replies continue."""
        case = rules.survivor(hit.case, self.index)
        now, within = int(self._clock()), self.settings.cases.reopen_within
        if rules.takes_replies(case, now=now, reopen_within=within):
            return case, hit.match
        answered = self._resolver.by_in_reply_to(ev) or self._resolver.by_references(ev)
        live = None
        if answered is not None:
            live = rules.survivor(answered.case, self.index)
            if rules.takes_replies(live, now=now, reopen_within=within):
                ev.trace.append(f"{case.case_id} is {case.state.value}: the mail answered "
                                f"is {live.case_id}'s ({answered.match})")
                return live, answered.match
        for ended in (case, live) if live is not None else (case,):
            taking = rules.taking_replies(ended, self.index, now=now, reopen_within=within)
            if taking is not None:
                ev.trace.append(f"{ended.case_id} is {ended.state.value}: its replies go to "
                                f"{taking.case_id}")
                return taking, hit.match
        return case, hit.match

    def _stamp_body(self, ev: Evidence, tok: str, notes: list[str]) -> tuple[Splice, ...]:
        options = self.settings.stamp
        msg = ev.msg
        if not (options.html or options.text):
            return ()
        if not msg.body:
            notes.append("body-not-stamped:empty")  # nothing to put a token line after
            return ()
        # The tree the token scan may have parsed already: the body is split once.
        plan = stamp.plan_message_stamp(msg.headers, msg.body, tok, tok, options,
                                        newline=msg.newline, tree=ev.tree)
        notes.extend(
            f"{o.target}-not-stamped:{o.reason.replace(' ', '-')}"
            for o in plan.outcomes if o.status == "skipped"
        )
        if all(o.status == "absent" for o in plan.outcomes):
            # An image, a forwarded message... or a part whose Content-Type does not parse.
            why = next((o.reason for o in plan.outcomes if o.reason), "no text part")
            notes.append(f"body-not-stamped:{why.replace(' ', '-')}")
        return plan.splices

    def _app_state_change(self, msg: Message, now: int, notes: list[str], trace: list[Step],
                          merged: bool) -> CaseChange | None:
        """What the app's `X-Case-State` does to the case, if it set one. The mail of a
        ticket merged away (`merged`: it went to the survivor) does not end the survivor:
        helpdesks close the merged ticket and mail its requester, and that state is the
        merged ticket's, which the merge ended already. Open or waiting still count: the
        survivor is where that conversation's replies go now."""
        state, bad = outbound.app_state(msg, self._names)
        if bad:
            notes.append("bad-app-case-state")
        if state is None:
            return None
        if merged and state in _ENDS:
            notes.append("app-state-ignored:merged")
            trace.append(f"app X-Case-State {state} not applied: it ends the merged ticket, "
                         "not the survivor")
            return None
        return partial(rules.with_state, state=state, now=now)

    def _stamp_headers(self, msg: Message, case: CaseRecord, tok: str, new_case: bool,
                       domain: str, now: float, notes: list[str]) -> list[Edit]:
        tokens = self.settings.tokens
        edits: list[Edit] = []
        subject = outbound.subject_edit(msg, self.keyring, tok, tokens.subject_template)
        if subject is not None:
            edits.append(subject)
        anchor = token.anchor(tok, tokens.anchor_domain or domain)
        references = outbound.references_edit(msg, anchor)
        if references is not None:
            edits.append(references)
        edits += outbound.thread_index_edits(msg, case, new_case, now, tokens.subject_template)
        if msg.get("Subject") is not None and not outbound.writable(msg.get("Subject") or ""):
            notes.append("subject-8bit")
        return edits

