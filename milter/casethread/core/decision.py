"""What the engine decided for one message: the log line's facts and the edits to apply."""

from __future__ import annotations

from dataclasses import field

from .edits import Edit
from .frozen import frozen
from .model import Direction
from .stamp import Splice

# One step of how a decision was reached: its line, or a template and the values that fill
# it (`str.format`), formatted only when the trace is read (`Decision.trace`): only
# `casethread filter --explain` reads it, and the milter's every message made its lines.
# The values are immutable (strings, records, hits), so the line is the one of that moment.
Step = str | tuple[str, tuple[object, ...]]


@frozen
class Decision:
    direction: Direction
    case_ids: tuple[str, ...] = ()
    # How the case was found: DESIGN §6 X-Case-Match values, plus "app" (outbound X-Case-ID).
    match: str = "none"
    state: str = ""
    edits: tuple[Edit, ...] = ()
    # Anomalies worth one word in the log line ("message-id-added", "bad-app-case-id", ...).
    notes: tuple[str, ...] = field(default=())
    # Body changes as splices into the body as received; empty: the body is not replaced.
    body_splices: tuple[Splice, ...] = ()
    # How the decision was reached, one step per line (`trace`).
    steps: tuple[Step, ...] = ()
    # The X-Case-Auto value of inbound mail (autoreply.KINDS); "" for other directions.
    auto: str = ""
    # Set when the message is refused (case_headers.refusal): the reply text, nothing applied.
    refused: str = ""
    # The earlier case of a new one opened instead of a follow-up (X-Case-Related).
    related: tuple[str, ...] = ()

    @property
    def trace(self) -> tuple[str, ...]:
        """How the decision was reached, one line per step (`casethread filter --explain`)."""
        return tuple([step if isinstance(step, str) else step[0].format(*step[1])
                      for step in self.steps])

    def log_fields(self) -> str:
        parts = [
            f"direction={self.direction.value}",
            f"case={','.join(self.case_ids) or '-'}",
            f"match={self.match}",
        ]
        if self.state:
            parts.append(f"state={self.state}")
        if self.related:
            parts.append(f"related={','.join(self.related)}")
        if self.refused:
            parts.append("refused")
        parts.append(f"edits={len(self.edits)}")
        if self.body_splices:
            parts.append("body=stamped")
        if self.notes:
            parts.append(f"notes={','.join(self.notes)}")
        return " ".join(parts)
