# casethread: file support mail by the headers the milter adds (X-Case-*), for Dovecot's
# Pigeonhole Sieve (or any Sieve with the variables, imap4flags and mailbox extensions).
#
# Use it as the support mailbox's script (e.g. ~support/.dovecot.sieve, or a sieve_before
# script in Dovecot). It files
#   - auto-generated mail (X-Case-Auto other than "no": auto-replies, bounces, bulk) and
#     looping senders (X-Case-Loop: yes) into Cases/Auto,
#   - every other case mail into Cases/<queue> (X-Case-Queue, e.g. Cases/billing), also
#     bulk mail that answers our mail (X-Case-Match token, in-reply-to, references or
#     thread-index: a person's reply a mailing list relayed, or a ticket system such as RT
#     sent with "Precedence: bulk"), which moved its case as the person's reply does,
# and flags each case mail with its case id (X-Case-ID, e.g. the IMAP keyword C-000123), so
# a mail client can search or label a case's whole thread. Mail without casethread's headers
# (not addressed to inbound.addresses) stays in INBOX.
#
# These headers can be trusted because casethread removes every X-Case-* header a sender
# wrote before adding its own. If you change headers.prefix in casethread.yaml, change the
# header names here too. "/" is the folder separator here: with Dovecot's default Maildir++
# layout (separator ".") write "Cases.Auto" and "Cases.${queue}" instead, or set
# `separator = /` on the namespace. :create makes a missing folder.
#
# Tested by tests/unit/test_contrib_downstream.py with sieve-test (Debian: dovecot-sieve) on
# messages produced by `casethread filter`.

require ["fileinto", "mailbox", "variables", "imap4flags"];

# The case id as an IMAP keyword on the message (a split case's mail names several cases;
# the first is used).
if header :matches "X-Case-ID" "*" {
    set "case" "${1}";
    addflag "${case}";
}

if anyof (header :is "X-Case-Loop" "yes",
          allof (exists "X-Case-Auto", not header :is "X-Case-Auto" ["no", "bulk"]),
          allof (header :is "X-Case-Auto" "bulk",
                 not header :is "X-Case-Match"
                     ["token", "in-reply-to", "references", "thread-index"])) {
    fileinto :create "Cases/Auto";
    stop;
}

if allof (not string :is "${case}" "",
          header :matches "X-Case-Queue" "*") {
    fileinto :create "Cases/${1}";
    stop;
}
