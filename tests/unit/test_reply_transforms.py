"""Replies built from our STAMPED mail by composing, at random, what real mail clients and
servers do to a reply (a seeded property test).

For each seed: an unrelated case B is opened first (so "the wrong case" is a possible outcome),
then the agent's mail of case A is stamped by the real engine (text only, HTML and text, either
with an attachment; sometimes with the app's own case id written as `[Case ...]`). A "client"
then builds the customer's reply from the stamped output through 1-4 transformations drawn
from `TRANSFORMS`, each a small named function that changes a `Reply` model the way a named
client or RFC does. The model knows which evidence a README strategy reads survived
(`evidence`), and the property is:

- some evidence survived: the reply goes to case A (its only `X-Case-ID`);
- none survived: it opens a new case or none, never case A or case B;
- `Engine.process` never raises.

Half the seeds go through the engine as the milter calls it (the decision at end of headers,
`body_wanted`, then the body), half as `casethread filter` does. A failure prints the seed and
the composition, so `run_seed(seed)` reproduces it. `CASETHREAD_REPLY_SEEDS=N` runs seeds
0..N-1 instead of the committed list (the hunt: 2,000 and more).
"""

from __future__ import annotations

import base64
import copy
import dataclasses
import email
import email.header
import email.message
import email.utils
import html
import os
import random
import re
import textwrap
import urllib.parse
from collections.abc import Callable
from typing import Any

import pytest

from casethread.core.message import Envelope, Message, parse_raw, serialize
from casethread.core.model import Direction

SUPPORT = "Example Support <support@example.com>"
PAT = "Pat Customer <pat@customer.example.org>"
WHEN = "Mon, 30 Nov 2026 at 10:15"
NL = "\r\n"

# (seed, most transformations): 0-999 of 1-4 keep the file to a few seconds (866 and 930 among
# them found a `data:` URI screenshot using up the scan budget); then those that found it too
# and in UTF-16 (the smallest: 3244 of 4, then of 8 with charset_utf16 added).
SEEDS = [(seed, 4) for seed in range(1000)] + [(3244, 4), (3244, 8), (7521, 8)]


# -- the agent's mail, stamped by the engine ------------------------------------------------

AGENT_TEXTS = (
    "Hello Pat,\n\nthank you for your message about the printer on the third floor. Could you "
    "tell us the model number printed on the label at the back, and whether the paper jam "
    "happens with every tray or only with the manual feed?\n\nKind regards,\nDana",
    "Hallo Pat,\n\nvielen Dank für Ihre Nachricht. Bitte senden Sie uns die Seriennummer des "
    "Druckers und ein Foto der Fehlermeldung.\nMit freundlichen Grüßen\nDana",
    "Hi Pat,\nthe replacement part ships today – expect it within 3 days.\nDana",
)
AGENT_SUBJECTS = ("Printer jam on floor 3", "Drucker: Papierstau – Ersatzteil",
                  "Your order 4711 needs a signature before we can ship the replacement part")


@dataclasses.dataclass(frozen=True)
class Stamped:
    """What the customer's client sees of our stamped mail."""

    raw: bytes
    subject: str  # RFC 2047-decoded, our tag included
    message_id: str
    references: tuple[str, ...]
    thread_index: str
    text: str  # the text/plain part, decoded
    html: str | None  # the text/html part's <body> content, decoded
    case_id: str
    token: str
    app_ref: str | None  # the app's "[Case ...]" in Subject and text, if it wrote one


def encoded_subject(subject: str) -> str:
    """The agent's client writes a non-ASCII Subject as RFC 2047 words (stamping appends our
    tag without re-encoding them)."""
    if subject.isascii():
        return subject
    return email.header.Header(subject, "utf-8").encode()


def mime_text(kind: str, text: str) -> str:
    return (f"Content-Type: text/{kind}; charset=utf-8{NL}Content-Transfer-Encoding: 8bit{NL}"
            f"{NL}{text.replace(chr(10), NL)}{NL}")


def agent_body(rng: random.Random, text: str) -> tuple[str, str]:
    """(Content-Type, body) of the agent's mail: text only, or HTML and text, each possibly
    with a PDF attached."""
    paragraphs = "".join(f"<p>{html.escape(p).replace(chr(10), '<br>')}</p>"
                         for p in text.split("\n\n"))
    alternative = rng.random() < 0.6
    if alternative:
        ctype = 'multipart/alternative; boundary="alt-1"'
        body = (f"--alt-1{NL}{mime_text('plain', text)}--alt-1{NL}"
                f"{mime_text('html', f'<html><body>{paragraphs}</body></html>')}--alt-1--{NL}")
    else:
        ctype, body = "text/plain; charset=utf-8", text.replace("\n", NL) + NL
    if rng.random() < 0.4:
        first = f"Content-Type: {ctype}{NL}" + ("" if alternative else
                                                 f"Content-Transfer-Encoding: 8bit{NL}")
        pdf = base64.encodebytes(bytes(rng.randrange(256) for _ in range(300))).decode()
        body = (f"--mix-1{NL}{first}{NL}{body}--mix-1{NL}Content-Type: application/pdf; "
                f'name="label.pdf"{NL}Content-Disposition: attachment; filename="label.pdf"{NL}'
                f"Content-Transfer-Encoding: base64{NL}{NL}{pdf.replace(chr(10), NL)}--mix-1--{NL}")
        ctype = 'multipart/mixed; boundary="mix-1"'
    return ctype, body


def customer_question(h: Any, rng: random.Random) -> tuple[list[str], str]:
    """Pat's first mail, which opens case A, sometimes answering a thread among Pat's
    colleagues: (its References and Message-ID, the case id)."""
    thread = [f"<colleague.{n}@customer.example.org>" for n in range(rng.randint(0, 6))]
    mid = f"<question.{h.clock.now:.0f}@customer.example.org>"
    links = [("References", " ".join(thread))] if thread else []
    res = h.inbound(("From", PAT), ("To", SUPPORT), ("Subject", "printer"), ("Message-ID", mid),
                    *links, body=b"The printer jams.\r\n")
    return [*thread, mid], str(res.case_id)


def stamp_agent_mail(h: Any, rng: random.Random) -> Stamped:
    """Case A's mail to Pat, stamped by the engine, then read as the client reads it: the
    case's first mail, or the answer to Pat's question (In-Reply-To and References name it)."""
    text = rng.choice(AGENT_TEXTS)
    subject = rng.choice(AGENT_SUBJECTS)
    headers = [("From", SUPPORT), ("To", PAT), ("MIME-Version", "1.0")]
    app_ref = None
    if rng.random() < 0.5:
        thread, app_ref = customer_question(h, rng)
        headers += [("In-Reply-To", thread[-1]), ("References", " ".join(thread))]
    elif rng.random() < 0.3:  # an app that names its own ticket id
        app_ref = f"T-{rng.randrange(1000, 9999)}"
    if app_ref and rng.random() < 0.5:  # a helpdesk writes its ticket id, as most do
        headers.append(("X-Case-ID", app_ref))
        subject += f" [Case {app_ref}]"
        text += f"\n\nYour case number: [Case {app_ref}]"
    else:
        app_ref = None
    if rng.random() < 0.3:  # the agent answers in Outlook, which writes a root of its own:
        root = b"\x01\x01\xdc" + rng.randbytes(19)  # reserved 0x01, FILETIME, GUID (MS-OXOMSG)
        headers += [("Thread-Index", base64.b64encode(root).decode()),
                    ("Thread-Topic", subject)]
    ctype, body = agent_body(rng, text)
    headers += [("Subject", encoded_subject(subject)), ("Content-Type", ctype)]
    if ctype.startswith("text/plain"):
        headers.append(("Content-Transfer-Encoding", "8bit"))
    res = h.outbound(*headers, body=body.encode())
    raw = serialize(res.headers, res.body, b"\r\n")
    return read_stamped(raw, res.case_id, h.token(res.case_id), app_ref)


def read_stamped(raw: bytes, case_id: str, token: str, app_ref: str | None) -> Stamped:
    parsed = email.message_from_bytes(raw)
    text, markup = "", None
    for part in parsed.walk():
        if part.get_content_maintype() != "text" or part.get_filename():
            continue
        content = part.get_payload(decode=True).decode(part.get_content_charset() or "utf-8")
        if part.get_content_subtype() == "plain":
            text = content.replace("\r\n", "\n")
        else:
            markup = content.split("<body>", 1)[1].split("</body>", 1)[0]
    unfolded = re.sub(r"\r?\n(?=[ \t])", "", parsed["Subject"])
    subject = str(email.header.make_header(email.header.decode_header(unfolded)))
    return Stamped(raw, subject, parsed["Message-ID"], tuple(parsed["References"].split()),
                   parsed["Thread-Index"], text.rstrip("\n"), markup, case_id, token, app_ref)


# -- the reply, as a model the transformations change -----------------------------------------

@dataclasses.dataclass
class Reply:
    """The customer's reply before rendering. Defaults: Thunderbird's plain-text reply
    (RFC 5322 §3.6.4: In-Reply-To the answered ID, References its References plus it;
    "Re: " Subject; the quote below an "On ... wrote:" line, `> ` per line)."""

    stamped: Stamped
    subject: str
    in_reply_to: list[str]
    references: list[str]
    thread_index: str | None = None
    subject_words: tuple[str, str] | None = None  # RFC 2047 (encoding, charset)
    fold_subject: bool = False
    layout: str = "bottom"  # bottom | top | outlook | forward | none
    quote_mark: str = "> "
    own_text: str = "Thanks, it is a LaserJet 4250 – the jam happens with tray 2 only.\n\nPat"
    outlook_marks: bool = False  # Outlook's "prefix each line of the original message"
    rewrap: int | None = None
    flowed: bool = False
    transfer: str = "8bit"  # 8bit | quoted-printable | base64
    charset: str = "utf-8"
    html_quote: str | None = None  # None: text/plain; "cite" | "gmail": HTML only
    spans: bool = False
    sanitized: bool = False
    alternative: bool = False
    raw_utf8_subject: bool = False
    sender: str = PAT
    hidden_tag: bool = True
    forward: str | None = None  # "rfc822" | "eml": how the stamped mail is attached
    photo: str | None = None  # "inline" | "attached"
    screenshot: int = 0  # bytes of a pasted image in the HTML, as a data: URI
    gateway: str | None = None  # a gateway's URL rewriting (`REWRITERS`) and top banner

    @property
    def token_in_subject(self) -> bool:
        return self.stamped.token in self.subject


Transform = Callable[[Reply, random.Random], str]


def fixed(name: str, doc: str, **values: Any) -> Transform:
    """A transformation that sets fields of the reply to fixed values, as most in the table
    do (a list value is copied, so no two replies share one)."""
    def transform(r: Reply, rng: random.Random) -> str:
        for field, value in values.items():
            setattr(r, field, copy.copy(value))
        return name

    transform.__name__, transform.__doc__ = name, doc
    return transform


drop_in_reply_to = fixed(
    "drop_in_reply_to",
    """A client that writes References but no In-Reply-To (RFC 5322 §3.6.4 has both as
    SHOULD, and not every mailer writes both).""",
    in_reply_to=[])


drop_references = fixed(
    "drop_references",
    """A client that writes In-Reply-To alone (RFC 5322 §3.6.4's SHOULD; many scripts and some
    clients write no References).""",
    references=[])


def trim_references(r: Reply, rng: random.Random) -> str:
    """RFC 5322 §3.6.4 lets a long References be trimmed; Gmail and Thunderbird keep the first
    and the newest IDs."""
    if len(r.references) > 4:
        r.references = [r.references[0], *r.references[-3:]]
    return "trim_references"


def references_last_only(r: Reply, rng: random.Random) -> str:
    """A client that writes References as the answered ID alone, the older IDs dropped (RFC
    5322 §3.6.4 asks for them, not every client keeps them)."""
    r.references = r.references[-1:]
    return "references_last_only"


drop_links = fixed(
    "drop_links",
    """A reply written as a new mail to support, the old text pasted in (or web mail that
    keeps neither field): no In-Reply-To, no References.""",
    in_reply_to=[], references=[])


def replace_links(r: Reply, rng: random.Random) -> str:
    """Web mail that loses the answered mail's IDs (a reply from a mobile web view, a mail
    re-sent from the Sent folder) writes IDs of its own draft thread instead."""
    own = f"<draft.{rng.randrange(1 << 30):x}@mail.customer.example.org>"
    r.in_reply_to, r.references = [own], [own]
    return "replace_links"


def outlook_thread_index(r: Reply, rng: random.Random) -> str:
    """Outlook answers with the Thread-Index it read plus a 5-byte child block (MS-OXOMSG
    2.2.1.3: PidTagConversationIndex)."""
    blocks = rng.randbytes(5 * rng.randint(1, 3))  # the customer's own earlier replies too
    r.thread_index = base64.b64encode(base64.b64decode(r.stamped.thread_index) + blocks).decode()
    return "outlook_thread_index"


PREFIXES = ("RE: ", "AW: ", "SV: ", "Antw: ", "Odp: ", "\u56de\u590d: ", "RE[2]: ",
            "Re: Re: Fwd: ", "\u7b54\u590d: ", "VS: ", "R: ", "\u0391\u03a0: ")


def subject_prefix(r: Reply, rng: random.Random) -> str:
    """The reply prefix of the client's language (Outlook's: "AW:" German, "SV:" Swedish,
    "Antw:" Dutch, "Odp:" Polish, "回复:" Chinese, "ΑΠ:" Greek; "RE[2]:" Eudora-style
    counting; a chain "Re: Re: Fwd:" where clients stack them), replacing "Re: "."""
    prefix = rng.choice(PREFIXES)
    r.subject = prefix + r.subject.removeprefix("Re: ")
    return f"subject_prefix({prefix.strip()})"


GATEWAY_TAGS = ("[EXTERNAL]", "[External]", "***SPAM***", "[SPAM]", "{Spam?}", "[support-l]",
                "EXT:")


# How gateways rewrite every URL of mail from outside (Microsoft's Safe Links, Mimecast's URL
# Protect, Proofpoint's URL Defense v3): the shapes their decoders read.
REWRITERS: dict[str, Callable[[str], str]] = {
    "safelinks": lambda url: ("https://eur01.safelinks.protection.outlook.com/?url="
                              + urllib.parse.quote(url, safe="") + "&data=05%7C02%7Cpat%40"
                              "customer.example.org%7C0a1b%7C0%7C0%7C638&sdata=Ab12%2Bx%3D"
                              "&reserved=0"),
    "mimecast": lambda url: "https://protect-eu.mimecast.com/s/AbCdEfGhIjKl?domain=example.com",
    "proofpoint": lambda url: f"https://urldefense.com/v3/__{url}__;!!AbCd12!EfGh34-Ij$",
}
BANNER = ("CAUTION: This email originated from outside of the organization. Do not click",
          "links or open attachments unless you recognize the sender.")
URL = re.compile(r'https?://[^\s"<>]+')


def gateway(r: Reply, rng: random.Random) -> str:
    """The customer's reply passes a gateway (ours in front of support@, or theirs, whose
    rewritten URLs and banner the reply quotes): a warning banner at the top of each text part
    and every URL rewritten; the reply's own text holds a link."""
    r.gateway = rng.choice(sorted(REWRITERS))
    r.own_text = r.own_text.replace("tray 2 only.", "tray 2 only (https://www.customer."
                                    "example.org/kb/4250?id=7&x=y).")
    return f"gateway({r.gateway})"


def gatewayed(kind: str, text: str, r: Reply) -> str:
    """A text part as the gateway leaves it (`gateway`)."""
    if r.gateway is None:
        return text
    text = URL.sub(lambda m: REWRITERS[r.gateway or ""](m.group(0)), text)
    if kind == "plain":
        return NL.join(BANNER) + NL + NL + text
    banner = f'<table><tr><td style="background:#FFEB9C">{" ".join(BANNER)}</td></tr></table>'
    return text.replace("<body>", "<body>" + banner, 1)


def external_tag(r: Reply, rng: random.Random) -> str:
    """A gateway or list prepends a tag (Exchange Online's and Proofpoint's "[EXTERNAL]",
    SpamAssassin's and Amavis's spam tags, MailScanner's "{Spam?}", a list's "[name]")."""
    tag = rng.choice(GATEWAY_TAGS)
    r.subject = f"{tag} {r.subject}"
    return f"external_tag({tag})"


# Labels as clients write them (letter case included); Python's codecs know each.
SUBJECT_CHARSETS = ("utf-8", "UTF-8", "iso-8859-1", "ISO-8859-15", "windows-1252", "GBK",
                    "gb2312", "gb18030", "big5", "ISO-2022-JP", "Shift_JIS", "EUC-KR", "KOI8-R")
# The customer's own words in the language of a regional charset.
REGIONAL = {
    "GBK": "谢谢，型号是 LaserJet 4250。",
    "gb2312": "谢谢，型号是 LaserJet 4250。",
    "big5": "謝謝，型號是 LaserJet 4250。",
    "ISO-2022-JP": "ありがとうございます。"
                   "LaserJet 4250 です。",
    "Shift_JIS": "ありがとうございます。"
                 "LaserJet 4250 です。",
    "EUC-KR": "감사합니다. LaserJet 4250입니다.",
    "KOI8-R": "Спасибо, это LaserJet 4250.",
}


def encode_subject(r: Reply, rng: random.Random) -> str:
    """The client re-encodes the whole Subject as RFC 2047 words, our tag included (Outlook,
    Apple Mail), B or Q, in the charset of the client's language (Gmail's "UTF-8", Outlook's
    "windows-1252", Foxmail's "GBK", Japanese mail's "ISO-2022-JP" of RFC 1468, ...; UTF-8
    where a character is not in it, as the Subject is when rendered)."""
    r.subject_words = (rng.choice("BQ"), rng.choice(SUBJECT_CHARSETS))
    return f"encode_subject({r.subject_words[0]},{r.subject_words[1]})"


fold_subject = fixed(
    "fold_subject",
    """A long Subject folded at a blank (RFC 5322 §2.2.3), as clients and relays fold it.""",
    fold_subject=True)


def drop_subject_token(r: Reply, rng: random.Random) -> str:
    """The customer (or a client's "clean subject" setting) deletes our tag: threading must then
    come from the links or the body."""
    r.subject = re.sub(r"\s*\[ref:[^\]]*\]", "", r.subject)
    return "drop_subject_token"


top_post = fixed(
    "top_post",
    """Gmail's and Apple Mail's plain-text reply: the text on top, the `> ` quote below.""",
    layout="top")


bottom_post = fixed(
    "bottom_post",
    """Thunderbird's and mutt's reply: the `> ` quote, the text below (RFC 3676 §4.5).""",
    layout="bottom")


outlook_quote = fixed(
    "outlook_quote",
    """Outlook's reply: the text on top, then "-----Original Message-----" and a header block
    (From, Sent, To, Subject) over the mail unquoted, without `>` marks.""",
    layout="outlook")


outlook_prefixed = fixed(
    "outlook_prefixed",
    """Outlook set to "Prefix each line of the original message": its header block and the
    mail under it, every line after `> `.""",
    layout="outlook", outlook_marks=True)


def quote_marks(r: Reply, rng: random.Random) -> str:
    """Quote marks other than `> `: `>` and `>> ` (RFC 3676 §4.5 nests marks without blanks),
    `| ` (an indent string a client is set to, mutt's `indent_string`), `> > ` (our mail
    quoted again in the customer's second reply)."""
    r.quote_mark = rng.choice((">", "| ", "> > ", ">> "))
    return f"quote_marks({r.quote_mark.strip()})"


def forward_inline(r: Reply, rng: random.Random) -> str:
    """An inline forward to support (Thunderbird's "-------- Forwarded Message --------", a tab
    after each field's label in text, a table in HTML): a new mail, the header block naming
    our Subject over our mail unquoted."""
    r.layout = "forward"
    r.in_reply_to, r.references = [], []
    r.subject = "Fwd: " + r.stamped.subject
    return "forward_inline"


def photo(r: Reply, rng: random.Random) -> str:
    """A phone's photo: iOS Mail puts it where the cursor was, between the reply's text and the
    quote, as parts of their own (text, `image/jpeg`, text, in `multipart/mixed`); other
    clients attach it after the text."""
    r.photo = rng.choice(("inline", "attached"))
    return f"photo({r.photo})"


def pasted_screenshot(r: Reply, rng: random.Random) -> str:
    """A screenshot pasted into an HTML editor that sends it as a `data:` URI in the HTML
    above the quote (web mail and CRM editors: SuiteCRM#9248, Frappe's mail before
    frappe#26726, isotope-mail#97), 1-2 MB of base64 in one attribute."""
    r.screenshot = rng.randrange(1 << 20, 2 << 20)
    r.html_quote = r.html_quote or "gmail"
    return "pasted_screenshot"


def other_sender(r: Reply, rng: random.Random) -> str:
    """The reply comes from another address: Pat's private account on the phone, or a
    colleague Pat forwarded our mail to, who answers it (neither is a participant, so a
    `[Case ...]` of theirs counts for nothing: README `subject-ref`)."""
    r.sender = rng.choice(("Pat <pat.home@mail.example.net>",
                           "Sam Colleague <sam@customer.example.org>"))
    return "other_sender"


no_quote = fixed(
    "no_quote",
    """A phone client, or the customer, that leaves the quote out (Outlook's "do not include
    original message", K-9's "quote original" off).""",
    layout="none")


def rewrap(r: Reply, rng: random.Random) -> str:
    """Thunderbird's Rewrap and Outlook's plain-text editor fill the quote's paragraphs again at
    72 or 76 columns (Outlook's default 76, Exchange 2003's 72), moving the token line."""
    r.rewrap = rng.choice((72, 76))
    return f"rewrap({r.rewrap})"


format_flowed = fixed(
    "format_flowed",
    """Apple Mail's format=flowed; delsp=yes (RFC 3676 §4.2): long lines soft-broken, inside a
    word too, each piece ending with a space that reassembly deletes.""",
    flowed=True)


quoted_printable = fixed(
    "quoted_printable",
    """Quoted-printable (RFC 2045 §6.7): soft line breaks where the encoder chose, anywhere a
    line may break.""",
    transfer="quoted-printable")


base64_body = fixed(
    "base64_body",
    """Base64 text (RFC 2045 §6.8), as Gmail sends non-ASCII text and Outlook UTF-16.""",
    transfer="base64")


charset_1252 = fixed(
    "charset_1252",
    """Outlook sends Western text as windows-1252 (UTF-8 where a character is not in it).""",
    charset="windows-1252")


def charset_regional(r: Reply, rng: random.Random) -> str:
    """The customer writes in their language and the client picks a regional charset (GBK and
    GB2312 in mainland China, Big5 in Taiwan, ISO-2022-JP (RFC 1468) or Shift_JIS in Japan,
    EUC-KR in Korea, KOI8-R in Russia; UTF-8 where our quoted text is not in it)."""
    r.charset = rng.choice(sorted(REGIONAL))
    r.own_text = REGIONAL[r.charset] + "\n\nPat"
    return f"charset_regional({r.charset})"


def legacy_in_reply_to(r: Reply, rng: random.Random) -> str:
    """In-Reply-To with a phrase (RFC 5322 §4.5.4's obsolete form, still written): nmh's
    `Your message of "DATE." <ID>`, Emacs message-mode's `<ID> (NAME's message of "DATE")`."""
    if r.in_reply_to:
        ids = " ".join(r.in_reply_to)
        r.in_reply_to = [rng.choice((f'Your message of "Mon, 30 Nov 2026 10:15:00 +0000."{NL}'
                                     f" {ids}", f'{ids} (Dana\'s message of "Mon, 30 Nov 2026'
                                                f' 10:15:00 +0000")'))]
    return "legacy_in_reply_to"


charset_utf16 = fixed(
    "charset_utf16",
    """UTF-16 text with a byte order mark (README's token row reads it: Windows programs that
    write "Unicode"), in base64, as 8bit cannot carry NUL bytes (RFC 2045 §2.8).""",
    charset="utf-16")


html_cite = fixed(
    "html_cite",
    """An HTML-only reply quoting in `<blockquote type="cite">` (Thunderbird, Apple Mail).""",
    html_quote="cite")


html_gmail = fixed(
    "html_gmail",
    """Gmail's HTML reply: `gmail_quote` div, the quote in `<blockquote class="gmail_quote">`.""",
    html_quote="gmail")


html_spans = fixed(
    "html_spans",
    """Outlook re-writes the HTML it sends: each run in a `<span lang=EN-US>` (Word splits runs
    at proofing boundaries: `[ref:` and the unknown word after it), blanks as `&nbsp;`, other
    characters as numeric references. Nothing in a plain-text reply.""",
    spans=True)


sanitize_html = fixed(
    "sanitize_html",
    """A web mail sanitizer that re-serialises the quoted mail without `style` and `data-*`
    attributes: our hidden tag's text then shows, and is read as any text.""",
    sanitized=True)


def html_alternative(r: Reply, rng: random.Random) -> str:
    """The common HTML reply: `multipart/alternative`, the plain-text part and an HTML part,
    each with the quote (Thunderbird and Apple Mail in HTML mode, Gmail's
    `gmail_quote`)."""
    r.alternative = True
    r.html_quote = r.html_quote or rng.choice(("cite", "gmail"))
    return f"html_alternative({r.html_quote})"


utf8_subject = fixed(
    "utf8_subject",
    """A Subject in raw UTF-8 (RFC 6532; Gmail over SMTPUTF8), encoded words undone.""",
    raw_utf8_subject=True)


strip_hidden_tag = fixed(
    "strip_hidden_tag",
    """Apple Mail drops `display:none` elements from the HTML it quotes (freescout#576).""",
    hidden_tag=False)


def forward_attached(r: Reply, rng: random.Random) -> str:
    """A forward as attachment to support (Thunderbird's "Forward As Attachment", Outlook's
    "Forward as Attachment"): a new mail, no In-Reply-To or References, "Fwd:" Subject, our
    stamped mail whole as `message/rfc822` (RFC 2046 §5.2.1), or saved as a `.eml` file and
    attached as `application/octet-stream` in base64 (web mail's "attach a file")."""
    r.forward = rng.choice(("rfc822", "eml"))
    r.in_reply_to, r.references = [], []
    r.subject = "Fwd: " + r.stamped.subject
    r.layout = "none"
    return f"forward_attached({r.forward})"


TRANSFORMS: tuple[Transform, ...] = (
    drop_in_reply_to, drop_references, trim_references, references_last_only, drop_links,
    replace_links, outlook_thread_index, subject_prefix, external_tag, encode_subject,
    fold_subject, drop_subject_token, legacy_in_reply_to, utf8_subject, other_sender,
    top_post, bottom_post, outlook_quote, outlook_prefixed, quote_marks, no_quote, rewrap,
    format_flowed, quoted_printable, base64_body, charset_1252, charset_regional, charset_utf16,
    html_cite, html_gmail, html_alternative, html_spans, sanitize_html, strip_hidden_tag, photo,
    pasted_screenshot, forward_attached, forward_inline, gateway,
)
# Drawn more often: the Subject tag and the References anchor name the case before the body is
# read, so the body's paths (and their interactions) are exercised only where both are lost.
WEIGHTS = {drop_subject_token: 12, drop_links: 5, replace_links: 4}


def new_reply(stamped: Stamped) -> Reply:
    refs = [*stamped.references, stamped.message_id]
    return Reply(stamped, "Re: " + stamped.subject, [stamped.message_id], refs)


def compose(stamped: Stamped, rng: random.Random, most: int) -> tuple[Reply, list[str]]:
    """1 to `most` transformations (a repeat drawn counts once); a forward first (it makes a
    new mail the others then change)."""
    weights = [WEIGHTS.get(t, 1) for t in TRANSFORMS]
    chosen = list(dict.fromkeys(rng.choices(TRANSFORMS, weights, k=rng.randint(1, most))))
    chosen.sort(key=lambda t: t not in (forward_attached, forward_inline))
    reply = new_reply(stamped)
    return reply, [t(reply, rng) for t in chosen]


# -- what survived: the oracle ----------------------------------------------------------------

def evidence(r: Reply) -> set[str]:
    """The README strategies' evidence left in the reply (the strategy table of *Inbound*)."""
    s = r.stamped
    found = set()
    if r.token_in_subject:
        found.add("token:subject")
    if any(s.message_id in field for field in r.in_reply_to):
        found.add("in-reply-to")
    if {s.message_id, *s.references} & set(r.references) & recorded(s):
        found.add("references")  # our Message-ID, the anchor (token strategy), Pat's question
    if r.thread_index:
        found.add("thread-index")
    if body_keeps_token(r):
        found.add("token:body")
    if s.app_ref and r.sender == PAT:  # guessable: only a participant's counts
        if f"[Case {s.app_ref}]" in r.subject:
            found.add("subject-ref")
        if r.forward or r.layout != "none":
            found.add("body-ref")  # the agent's text says it, in every quote of it
    return found


def recorded(s: Stamped) -> set[str]:
    """The IDs of the thread the index knows: ours, our anchor, Pat's question (not the
    colleagues' mail before it, which never came to us)."""
    return {i for i in (s.message_id, *s.references) if "colleague." not in i}


def body_keeps_token(r: Reply) -> bool:
    """A forward attaches our mail whole; a plain-text quote holds our token line; an HTML
    quote holds our hidden tag unless the client dropped it, or the text's token line when our
    mail was text only, or our Subject (tag included) in Outlook's header block."""
    if r.forward:
        return True
    if r.layout == "none":
        return False
    if r.html_quote is None or r.alternative or r.stamped.html is None:
        return True
    return r.hidden_tag or r.layout in ("outlook", "forward")


# -- rendering ---------------------------------------------------------------------------------

def header_block(r: Reply) -> list[str]:
    """The block over a quote without marks: Outlook's (its plain text wrapped at 76 columns,
    README *Automatic mail*), or a forward's (Thunderbird's, tab after each label)."""
    if r.layout == "forward":
        return ["-------- Forwarded Message --------", f"Subject: \t{r.stamped.subject}",
                "Date: \tMon, 30 Nov 2026 10:15:00 +0000", f"From: \t{SUPPORT}", f"To: \t{PAT}",
                ""]
    block = ["-----Original Message-----", f"From: {SUPPORT}",
             "Sent: Monday, November 30, 2026 10:15 AM", f"To: {PAT}",
             f"Subject: {r.stamped.subject}"]
    return [*(w for line in block for w in textwrap.wrap(line, 76, break_long_words=False)), ""]


def quoted_lines(r: Reply) -> list[str]:
    """The plain-text quote as the client writes it (rewrapped if asked)."""
    source = r.stamped.text.split("\n")
    unmarked = r.layout == "forward" or (r.layout == "outlook" and not r.outlook_marks)
    prefix = "" if unmarked else r.quote_mark
    lines = fill(source, r.rewrap - len(prefix)) if r.rewrap else source
    if r.layout in ("outlook", "forward"):
        lines = header_block(r) + lines
    else:
        lines = [f"On {WHEN}, {SUPPORT} wrote:"] + [prefix + line for line in lines]
        prefix = ""
    return [(prefix + line).rstrip() for line in lines]


def fill(lines: list[str], width: int) -> list[str]:
    """Paragraphs (runs of lines between blank ones) filled again at `width`, words unbroken."""
    out: list[str] = []
    for para in "\n".join(lines).split("\n\n"):
        words = para.replace("\n", " ")
        out += textwrap.wrap(words, width, break_long_words=False, break_on_hyphens=False)
        out.append("")
    return out[:-1]


def text_lines(r: Reply) -> list[str]:
    own = r.own_text.split("\n")
    if r.layout == "none":
        return own
    quote = quoted_lines(r)
    return [*quote, "", *own] if r.layout == "bottom" else [*own, "", *quote]


QUOTE_MARKS = re.compile(r"(?:>[ ]?)+")


def flow(lines: list[str], rng: random.Random) -> list[str]:
    """RFC 3676 with delsp=yes: each line longer than the client's width broken at any place,
    every piece but the last ending in a space, quoted pieces repeating the quote marks;
    space-stuffed where a line would start with a blank, ">" or "From " (§4.4)."""
    width = rng.randint(60, 78)
    out = []
    for line in lines:
        line = line.rstrip(" ")
        marks = QUOTE_MARKS.match(line)
        prefix = marks.group(0) if marks else ""
        content = line[len(prefix):]
        room = max(width - len(prefix), 20)
        pieces = []
        while len(content) > room:
            cut = rng.randint(room // 2, room)
            pieces.append(content[:cut] + " ")
            content = content[cut:]
        pieces.append(content)
        for piece in pieces:
            stuffed = not prefix.endswith(" ") and piece.startswith((" ", ">", "From "))
            out.append(prefix + (" " if stuffed else "") + piece)
    return out


def html_body(r: Reply) -> str:
    """The HTML-only reply: the text, then (or under it) the quote the client writes."""
    own = "".join(f"<div>{html.escape(p)}</div>" for p in r.own_text.split("\n"))
    if r.screenshot:
        png = base64.b64encode(b"\x89PNG\r\n\x1a\n" + bytes(r.screenshot)).decode()
        own += f'<div><img src="data:image/png;base64,{png}" width="800"></div>'
    if r.layout == "none":
        return f"<html><body>{own}</body></html>"
    s = r.stamped
    mail = s.html if s.html is not None else (
        f'<pre class="moz-quote-pre" wrap="">{html.escape(s.text)}</pre>')
    if not r.hidden_tag:
        mail = re.sub(r'<div style="display:none[^>]*data-casethread-ref[^>]*>[^<]*</div>', "",
                      mail)
    if r.sanitized:
        mail = re.sub(r'\s(?:style|data-[\w-]+)="[^"]*"', "", mail)
    if r.layout == "outlook":  # Outlook on the web: a header block, no blockquote
        block = "<br>".join(html.escape(line) for line in header_block(r))
        quote = f'<hr><div id="divRplyFwdMsg" dir="ltr">{block}</div>{mail}'
    elif r.layout == "forward":  # Thunderbird's: a table, each label and value a cell
        rows = "".join(f'<tr><th valign="BASELINE" nowrap="nowrap" align="RIGHT">{label}: '
                       f"</th><td>{html.escape(value)}</td></tr>" for label, value in (
                           ("Subject", s.subject), ("Date", "Mon, 30 Nov 2026 10:15:00 +0000"),
                           ("From", SUPPORT), ("To", PAT)))
        quote = (f'<div class="moz-forward-container">-------- Forwarded Message --------'
                 f'<table class="moz-email-headers-table" border="0" cellpadding="0" '
                 f'cellspacing="0"><tbody>{rows}</tbody></table><br>{mail}</div>')
    elif r.html_quote == "gmail":
        quote = (f'<div class="gmail_quote"><div dir="ltr" class="gmail_attr">On {WHEN}, '
                 f'{html.escape(SUPPORT)} wrote:<br></div><blockquote class="gmail_quote" '
                 f'style="margin:0px 0px 0px 0.8ex">{mail}</blockquote></div>')
    else:
        quote = (f'<div class="moz-cite-prefix">On {WHEN}, {html.escape(SUPPORT)} wrote:<br>'
                 f'</div><blockquote type="cite">{mail}</blockquote>')
    inner = f"{quote}{own}" if r.layout == "bottom" else f"{own}{quote}"
    return f"<html><body>{inner}</body></html>"


def span_runs(markup: str) -> str:
    """Every text node's words in spans, `[ref:` a run of its own, blanks `&nbsp;`, non-ASCII
    as numeric references."""
    def runs(m: re.Match[str]) -> str:
        text = html.unescape(m.group(1)).replace("[ref:", "[ref:\x00")
        words = re.split(r"(\s+|\x00)", text)
        out = []
        for word in words:
            if word in ("", "\x00"):
                continue
            if word.isspace():
                out.append("&nbsp;" * len(word))
                continue
            escaped = html.escape(word).encode("ascii", "xmlcharrefreplace").decode()
            out.append(f'<span lang="EN-US">{escaped}</span>')
        return ">" + "".join(out) + "<"
    return re.sub(r">([^<>]+)<", runs, markup)


def qp_encode(data: bytes, rng: random.Random) -> str:
    """Quoted-printable, each encoded line cut by soft breaks at random places (never inside an
    `=XX`), no line over 76 characters."""
    out = []
    for line in data.split(b"\r\n"):
        atoms = [chr(b) if (33 <= b <= 126 and b != 61) or b in (9, 32) else f"={b:02X}"
                 for b in line]
        if atoms and atoms[-1] in (" ", "\t"):
            atoms[-1] = f"={ord(atoms[-1]):02X}"
        pieces, piece = [], ""
        limit = rng.randint(8, 75)
        for atom in atoms:
            if len(piece) + len(atom) > limit:
                pieces.append(piece + "=")
                piece, limit = "", rng.randint(8, 75)
            piece += atom
        out += [*pieces, piece]
    return NL.join(out)


def encoded_part(kind: str, text: str, r: Reply, rng: random.Random) -> bytes:
    """One text part of the reply: its MIME fields, a blank line, its encoded body."""
    text = gatewayed(kind, text, r)
    charset = r.charset if representable(text, r.charset) else "utf-8"
    data = text.encode(charset)
    params = "; format=flowed; delsp=yes" if kind == "plain" and r.flowed else ""
    transfer = "base64" if charset == "utf-16" else r.transfer
    if transfer == "base64":
        body = base64.encodebytes(data).decode().replace("\n", NL)
    elif transfer == "quoted-printable":
        body = qp_encode(data, rng) + NL
    else:
        body = data.decode(charset) + NL
    return (f"Content-Type: text/{kind}; charset={charset}{params}{NL}"
            f"Content-Transfer-Encoding: {transfer}{NL}{NL}{body}").encode()


def content(r: Reply, rng: random.Random) -> bytes:
    """The reply's own content: text, HTML, both as `multipart/alternative`, a photo."""
    if r.photo == "inline" and r.html_quote is None and r.layout != "none":
        own, quote = r.own_text.split("\n"), quoted_lines(r)
        first, last = (quote, own) if r.layout == "bottom" else (own, quote)
        parts = [text_part(first, r, rng), jpeg(rng), text_part(last, r, rng)]
        return multipart("mixed", parts, rng)
    parts = []
    if r.html_quote is None or r.alternative:
        parts.append(text_part(text_lines(r), r, rng))
    if r.html_quote is not None:
        markup = html_body(r)
        parts.append(encoded_part("html", span_runs(markup) if r.spans else markup, r, rng))
    mail = parts[0] if len(parts) == 1 else multipart("alternative", parts, rng)
    return multipart("mixed", [mail, jpeg(rng)], rng) if r.photo else mail


def text_part(lines: list[str], r: Reply, rng: random.Random) -> bytes:
    return encoded_part("plain", NL.join(flow(lines, rng) if r.flowed else lines), r, rng)


def jpeg(rng: random.Random) -> bytes:
    data = b"\xff\xd8\xff\xe0" + rng.randbytes(rng.randrange(20_000, 200_000))
    return (f'Content-Type: image/jpeg; name="IMG_0001.jpg"{NL}Content-Disposition: inline; '
            f'filename="IMG_0001.jpg"{NL}Content-Transfer-Encoding: base64{NL}{NL}'
            ).encode() + base64.encodebytes(data).replace(b"\n", NL.encode())


def multipart(subtype: str, parts: list[bytes], rng: random.Random) -> bytes:
    boundary = f"{subtype[:3]}-%x" % rng.randrange(1 << 32)
    return (f'Content-Type: multipart/{subtype}; boundary="{boundary}"{NL}{NL}'.encode()
            + b"".join(f"--{boundary}{NL}".encode() + p + NL.encode() for p in parts)
            + f"--{boundary}--{NL}".encode())


def attached(r: Reply) -> bytes:
    """Our stamped mail as the forward attaches it."""
    if r.forward == "eml":
        return (f'Content-Type: application/octet-stream; name="printer.eml"{NL}'
                f'Content-Disposition: attachment; filename="printer.eml"{NL}'
                f"Content-Transfer-Encoding: base64{NL}{NL}").encode() + base64.encodebytes(
                    r.stamped.raw).replace(b"\n", NL.encode())
    return (f'Content-Type: message/rfc822{NL}Content-Disposition: attachment; '
            f'filename="forwarded.eml"{NL}{NL}').encode() + r.stamped.raw


def representable(text: str, charset: str) -> bool:
    try:
        text.encode(charset)
    except UnicodeEncodeError:
        return False
    return True


def subject_field(r: Reply, rng: random.Random) -> str:
    subject = r.subject
    if r.raw_utf8_subject:
        return subject
    words = r.subject_words or (None if subject.isascii() else ("B", "utf-8"))
    if words:
        charset = words[1] if representable(subject, words[1]) else "utf-8"
        subject = encode_words(subject, words[0], charset, rng)
    elif r.fold_subject and " " in subject:
        blanks = [m.start() for m in re.finditer(" ", subject)]
        at = rng.choice(blanks)
        subject = subject[:at] + NL + subject[at:]
    return subject


def encode_words(text: str, encoding: str, charset: str, rng: random.Random) -> str:
    """RFC 2047 words of whole characters (§5), cut at random places, one per line when
    folded (the blanks between words are not text, §6.2)."""
    chunks, at = [], 0
    while at < len(text):
        size = rng.randint(4, 20)
        chunks.append(text[at:at + size])
        at += size
    words = []
    for chunk in chunks:
        data = chunk.encode(charset)
        if encoding == "B":
            payload = base64.b64encode(data).decode()
        else:
            payload = "".join(chr(b) if chr(b).isalnum() and b < 128 else
                              "_" if b == 32 else f"={b:02X}" for b in data)
        words.append(f"=?{charset}?{encoding}?{payload}?=")
    return (NL + " ").join(words) if rng.random() < 0.7 else " ".join(words)


def render(r: Reply, rng: random.Random) -> bytes:
    """The reply as the customer's MTA hands it to ours."""
    fields = [f"From: {r.sender}", f"To: {SUPPORT}", f"Subject: {subject_field(r, rng)}",
              f"Message-ID: <reply.{rng.randrange(1 << 40):x}@customer.example.org>",
              "MIME-Version: 1.0"]
    if r.in_reply_to:
        fields.append("In-Reply-To: " + " ".join(r.in_reply_to))
    if r.references:
        fields.append("References: " + (NL + " ").join(r.references))
    if r.thread_index:
        fields += [f"Thread-Index: {r.thread_index}", "Thread-Topic: printer"]
    own = content(r, rng)
    if r.forward:
        own = multipart("mixed", [own, attached(r)], rng)
    head, body = own.split(f"{NL}{NL}".encode(), 1)
    fields += head.decode().split(NL)
    return (NL.join(fields) + NL + NL).encode() + body


# -- the property --------------------------------------------------------------------------

def inbound(h: Any, r: Reply, raw: bytes, as_the_milter: bool) -> Any:
    """The reply through the engine, as `casethread filter` runs it or as the milter does."""
    headers, body = parse_raw(raw)
    envelope = Envelope(mail_from=email.utils.parseaddr(r.sender)[1],
                        rcpts=("support@example.com",))
    if not as_the_milter:
        return h.run(Message(envelope, headers, body), Direction.INBOUND)
    plan = h.engine.body_wanted(Message(envelope, headers, b""), Direction.INBOUND)
    msg = Message(envelope, headers, body[: max(plan.room, 0)])
    return h.run(msg, Direction.INBOUND, plan.found)


def open_other_case(h: Any) -> str:
    """Case B: another customer's, so that "the wrong case" is a possible outcome."""
    res = h.outbound(("From", SUPPORT), ("To", "Quinn <quinn@other.example.net>"),
                     ("Subject", "Invoice 2026-118"), body=b"Hello Quinn,\r\nyour invoice.\r\n")
    return str(res.case_id)


def run_seed(make_harness: Callable[..., Any], seed: int, most: int) -> None:
    """One composition of 1 to `most` transformations, checked against the oracle."""
    rng = random.Random(seed)
    h = make_harness()
    other = open_other_case(h)
    stamped = stamp_agent_mail(h, rng)
    reply, names = compose(stamped, rng, most)
    raw = render(reply, rng)
    found = evidence(reply)
    where = (f"seed {seed}, most {most}: {' + '.join(names)}; "
             f"evidence {sorted(found) or 'none'}")
    try:
        res = inbound(h, reply, raw, as_the_milter=seed % 2 == 1)
    except Exception as exc:  # the engine must never raise: report the composition
        raise AssertionError(f"{where}: the engine raised {exc!r}") from exc
    ids, match = res.all("X-Case-ID"), res.all("X-Case-Match")
    if found:
        assert ids == [stamped.case_id], f"{where}: got {ids} by {match}, want {stamped.case_id}"
    else:
        assert match in (["new"], ["none"]), f"{where}: got {ids} by {match}"
        assert not {stamped.case_id, other} & set(ids), f"{where}: got {ids} by {match}"


def seeds() -> list[tuple[int, int]]:
    """The committed seeds, or `CASETHREAD_REPLY_SEEDS` of them composing up to
    `CASETHREAD_REPLY_MOST` transformations (4 unless set) when hunting."""
    hunt = os.environ.get("CASETHREAD_REPLY_SEEDS")
    most = int(os.environ.get("CASETHREAD_REPLY_MOST", "4"))
    return [(seed, most) for seed in range(int(hunt))] if hunt else SEEDS


def test_reply_threads_under_composed_client_transformations(
        make_harness: Callable[..., Any]) -> None:
    """Every seed's composition; all failures reported together, each reproducible."""
    failures = []
    for seed, most in seeds():
        try:
            run_seed(make_harness, seed, most)
        except AssertionError as exc:
            failures.append(str(exc))
    assert not failures, f"{len(failures)} failing compositions:\n" + "\n".join(failures[:40])


@pytest.mark.parametrize("transform", TRANSFORMS, ids=lambda t: t.__name__)
def test_each_transformation_alone(make_harness: Callable[..., Any], transform: Transform) -> None:
    """Each transformation by itself on a text-and-HTML mail, so a table entry that breaks
    threading on its own is named directly."""
    for seed in range(3):
        rng = random.Random(seed)
        h = make_harness()
        open_other_case(h)
        stamped = stamp_agent_mail(h, rng)
        reply = new_reply(stamped)
        name = transform(reply, rng)
        res = inbound(h, reply, render(reply, rng), as_the_milter=False)
        assert res.all("X-Case-ID") == [stamped.case_id], f"seed {seed}: {name}"
