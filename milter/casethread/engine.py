"""The one entry point: `Engine.process(message)` composes core, index and settings.

The milter adapter and `casethread filter` both call it, so what the CLI prints is what the MTA
does. Index writes happen here (the core only reads through `CaseReader`), in the order that
keeps a crash between them harmless: a case exists before anything points at it.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable

from .core import inbound, msgid, outbound
from .core.case_headers import CaseHeaderNames, strip_ours
from .core.decision import Decision
from .core.direction import Classifier
from .core.message import Message
from .core.model import Direction
from .core.settings import Settings
from .core.store import CaseIndex

Clock = Callable[[], float]


class Engine:
    def __init__(
        self,
        settings: Settings,
        index: CaseIndex,
        clock: Clock = time.time,
        hostname: str | None = None,
    ) -> None:
        self.settings = settings
        self.index = index
        self._clock = clock
        self._hostname = hostname or socket.getfqdn() or "localhost.localdomain"
        self._classifier = Classifier(settings)
        self._names = CaseHeaderNames(settings.headers.prefix)

    def classify(self, msg: Message) -> Direction:
        return self._classifier.classify(msg.envelope)

    def process(self, msg: Message, direction: Direction | None = None) -> Decision:
        """Decide and record; raises on internal errors (the caller is the error boundary)."""
        if direction is None:
            direction = self.classify(msg)
        if direction is Direction.INBOUND:
            return self._inbound(msg)
        if direction is Direction.OUTBOUND:
            return self._outbound(msg)
        return Decision(Direction.OTHER, edits=tuple(strip_ours(msg, self._names)))

    def _inbound(self, msg: Message) -> Decision:
        now = int(self._clock())
        limit = self.settings.inbound.references_limit
        resolution = inbound.resolve(msg, self.index, limit)
        if resolution.case is None:
            case = self.index.create_case(now)
            state = "new"
        else:
            case = resolution.case
            state = case.state.value
        own_id = msgid.first_id(msg.get("Message-ID"))
        if own_id and not resolution.duplicate:
            self.index.record_message(own_id, case.case_id, now)
        edits = inbound.edits(msg, self._names, case.case_id, resolution, state)
        notes = () if own_id else ("no-message-id",)
        return Decision(
            Direction.INBOUND, (case.case_id,), resolution.match, state, tuple(edits), notes
        )

    def _outbound(self, msg: Message) -> Decision:
        now = self._clock()
        out = self.settings.outbound
        plan = outbound.plan(msg, self.index, self._names, self.settings.inbound.references_limit)
        notes: list[str] = ["bad-app-case-id"] if plan.bad_app_case_id else []
        if plan.app_case_id is not None:
            case = self.index.create_case(int(now), case_id=plan.app_case_id)
            match = "app"
        elif plan.related is not None:
            case, match = plan.related.case, plan.related.via
        elif out.new_case == "create":
            case, match = self.index.create_case(int(now)), "new"
        else:
            case, match = None, "none"
        domain = outbound.message_id_domain(msg, out.message_id_domain, self._hostname)
        message_id = outbound.ensure_message_id(msg, domain, now)
        if message_id.edit is not None:
            notes.append("message-id-added")
        if case is not None:
            self.index.record_message(message_id.normalised, case.case_id, int(now))
        edits = outbound.edits(msg, self._names, case, message_id)
        return Decision(
            Direction.OUTBOUND,
            (case.case_id,) if case else (),
            match,
            case.state.value if case else "",
            tuple(edits),
            tuple(notes),
        )
