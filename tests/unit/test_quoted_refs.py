"""Case and external references wrapped inside a quote (found in review: the quote marks HTML text
now gets per <blockquote> hid a reference its source wraps across lines)."""
from __future__ import annotations

import dataclasses
from typing import Any

from casethread.core.settings import ExternalRefRule

AGENT = ("From", "Dana Agent <dana@support.example.com>")
CUSTOMER = ("From", "Pat Customer <pat@customer.example.org>")
TO_CUSTOMER = ("To", "Pat Customer <pat@customer.example.org>")
TO_SUPPORT = ("To", "Support <support@example.com>")
HTML = ("Content-Type", 'text/html; charset="UTF-8"')


def test_body_ref_in_a_thunderbird_html_quote_wrapped_in_the_source(harness: Any) -> None:
    """Thunderbird writes HTML source wrapped at 72 columns: a quoted "[Case C-000001]" split
    by a source line break reads "[Case\\n> C-000001]" with the blockquote's mark."""
    r = harness.outbound(AGENT, TO_CUSTOMER, ("Subject", "Printer jam"))
    case = r.case_id
    body = (
        '<html>\n  <head>\n    <meta http-equiv="content-type" content="text/html; '
        'charset=UTF-8">\n  </head>\n  <body>\n    <p>Here is the serial number you asked '
        'for: 4711-0815.</p>\n    <div class="moz-cite-prefix">On 02.03.26 10:15, Dana Agent '
        'wrote:<br>\n    </div>\n    <blockquote type="cite" cite="mid:x@example.com">\n'
        '      <p>Hello Pat, please send us the serial number and keep the reference [Case\n'
        f'        {case}] in your answer.</p>\n    </blockquote>\n  </body>\n</html>\n')
    r = harness.inbound(CUSTOMER, TO_SUPPORT, ("Subject", "serial number"), HTML,
                        body=body.encode())
    assert (r.one("X-Case-Match"), r.all("X-Case-ID")) == ("body-ref", [case])


def test_external_ref_in_an_html_quote_wrapped_in_the_source(make_harness: Any) -> None:
    rule = ExternalRefRule(name="vendor", pattern=r"Ticket\s+#(\d+)", sender="",
                           search_subject=True, search_body=True)
    s = make_harness().settings
    harness = make_harness(dataclasses.replace(s, inbound=dataclasses.replace(
        s.inbound, external_refs=(rule,),
        strategies=(*s.inbound.strategies, "external-ref"))))
    first = harness.inbound(CUSTOMER, TO_SUPPORT, ("Subject", "Vendor Ticket #1234"))
    case = first.case_id
    body = ('<html><body>\n<p>Any news?</p>\n<blockquote type="cite">\n'
            '<p>The vendor opened Ticket\n#1234 for this.</p>\n</blockquote>\n</body></html>\n')
    r = harness.inbound(("From", "Ann Other <ann@third.example>"), TO_SUPPORT,
                        ("Subject", "any news"), HTML, body=body.encode())
    assert (r.one("X-Case-Match"), r.all("X-Case-ID")) == ("external-ref", [case])


def test_a_reference_wrapped_in_a_plain_text_quote(harness: Any) -> None:
    """The same in a ">"-quoted plain-text reply whose client re-wrapped the quote."""
    case = harness.outbound(AGENT, TO_CUSTOMER, ("Subject", "Printer jam")).case_id
    body = (f"Here is the serial number: 4711-0815.\r\n\r\n> Hello Pat, please keep the "
            f"reference [Case\r\n> {case}] in your answer.\r\n")
    r = harness.inbound(CUSTOMER, TO_SUPPORT, ("Subject", "serial number"), body=body.encode())
    assert (r.one("X-Case-Match"), r.all("X-Case-ID")) == ("body-ref", [case])


def test_a_reply_quoted_without_the_agents_signature_keeps_the_token(harness: Any) -> None:
    """Thunderbird and Roundcube quote a reply without the signature (from the `-- ` line to
    the end, both by default): the token line sits above the separator, so a reply that kept
    neither the Subject tag nor References (a new mail that quotes ours) still threads."""
    sent = harness.outbound(AGENT, TO_CUSTOMER, ("Subject", "Printer jam"),
                            body=b"Please send the serial number.\n-- \nDana Agent\nSupport\n")
    text = sent.body.decode()
    quoted = text[: text.index("\n-- \n") + 1]  # what the client quotes
    body = "4711-0815.\n\nOn 02.03.26 10:15, Dana Agent wrote:\n" + "".join(
        f"> {line}\n" for line in quoted.splitlines())
    r = harness.inbound(CUSTOMER, TO_SUPPORT, ("Subject", "Re: Printer jam"),
                        body=body.encode())
    assert (r.one("X-Case-Match"), r.all("X-Case-ID")) == ("token", [sent.case_id])


def _pipe_quote(text: str) -> str:
    """`text` quoted with "| " per line, as clients set to that quote prefix write it."""
    return "".join(f"| {line}\n" if line else "|\n" for line in text.splitlines())


def test_a_token_wrapped_behind_a_pipe_quote_prefix(harness: Any) -> None:
    """Mangling audit: a client quoting with "| " that hard-wraps the quote puts the prefix on
    the continuation line inside the tag ("[ref:HEAD" / "| TAIL]"); as with "> ", the prefix
    is skipped. The reply kept no other link (new Subject, no References)."""
    sent = harness.outbound(AGENT, TO_CUSTOMER, ("Subject", "Printer jam"),
                            body=b"Please send the serial number.\n")
    token = harness.token(sent.case_id)
    quoted = _pipe_quote(sent.body.decode()).replace(token, f"{token[:9]}\n| {token[9:]}")
    r = harness.inbound(CUSTOMER, TO_SUPPORT, ("Subject", "serial"),
                        body=f"4711-0815.\n\nDana wrote:\n{quoted}".encode())
    assert (r.one("X-Case-Match"), r.all("X-Case-ID")) == ("token", [sent.case_id])


def test_a_pipe_quoted_reply_threads_to_the_mail_answered_not_the_one_it_quoted(
        harness: Any) -> None:
    """Mangling audit: our mail of a ticket the app moved the conversation to quotes the older
    case's mail (its token line one level deeper, above ours). A reply that quotes it all
    with "| " ("| | [ref:older]" above "| [ref:T-900]") went to the older case: "|" counted
    as no quote mark, both tokens were at depth 0, and the first from the top won. "|" marks
    now count as ">" marks do."""
    older = harness.outbound(AGENT, TO_CUSTOMER, ("Subject", "Printer jam"),
                             body=b"Which printer is it?\n")
    answer = harness.outbound(AGENT, TO_CUSTOMER, ("Subject", "Your refund"),
                              ("X-Case-ID", "T-900"),
                              body=("The refund is its own case.\n\n"
                                    + "".join(f"> {line}\n"
                                              for line in older.body.decode().splitlines())
                                    ).encode())
    assert answer.case_id == "T-900"
    quoted = "".join(
        ("| " + line.replace("> ", "| ", 1) if line.startswith(">") else f"| {line}") + "\n"
        for line in answer.body.decode().splitlines())
    assert f"| | [ref:{harness.token(older.case_id)}]" in quoted
    r = harness.inbound(CUSTOMER, TO_SUPPORT, ("Subject", "thanks"),
                        body=f"Thanks.\n\nDana wrote:\n{quoted}".encode())
    assert (r.one("X-Case-Match"), r.all("X-Case-ID")) == ("token", [answer.case_id])


def test_a_reference_wrapped_in_a_pipe_quote(harness: Any) -> None:
    """Review: "|" counts as a quote mark for tokens (their depth, a wrapped tag) since
    e51408d, but the case reference patterns still saw "[Case" / "| C-1]" with the mark."""
    case = harness.outbound(AGENT, TO_CUSTOMER, ("Subject", "Printer jam")).case_id
    body = (f"Here is the serial number: 4711-0815.\r\n\r\n| Hello Pat, please keep the "
            f"reference [Case\r\n| {case}] in your answer.\r\n")
    r = harness.inbound(CUSTOMER, TO_SUPPORT, ("Subject", "serial number"), body=body.encode())
    assert (r.one("X-Case-Match"), r.all("X-Case-ID")) == ("body-ref", [case])
