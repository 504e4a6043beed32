#!/bin/sh
# Unpack Debian's Sendmail into a private directory, for the end-to-end test only.
#
# sendmail-bin conflicts with postfix: installing it would remove Postfix. So its packages
# (and the two libraries it needs that Postfix machines lack) are fetched with
# `apt-get download` and unpacked with `dpkg -x`; nothing is installed, no maintainer script
# runs. The test then runs ROOT/usr/libexec/sendmail/sendmail with
# LD_LIBRARY_PATH=ROOT/usr/lib/x86_64-linux-gnu (or the machine's multiarch directory) and
# builds its sendmail.cf with m4 (a real package, installed by `make test`) from
# ROOT/usr/share/sendmail/cf.
#
#   usage: contrib/sendmail/unpack-sendmail.sh [ROOT]     (default /var/tmp/casethread-sendmail)
#
# Idempotent: an existing complete unpack is kept. Needs root for apt-get update the first
# time; afterwards only the package download.
set -eu
ROOT=${1:-${CASETHREAD_SENDMAIL_ROOT:-/var/tmp/casethread-sendmail}}
PACKAGES="sendmail-bin sendmail-base sendmail-cf liblockfile1 libwrap0"
STAMP="$ROOT/.unpacked"

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$PACKAGES" ]; then
    exit 0
fi
rm -rf "$ROOT"
mkdir -p "$ROOT/debs" "$ROOT/root"
cd "$ROOT/debs"
# apt-get download drops to user _apt, which cannot write a root-owned directory: warns only.
if ! apt-get download $PACKAGES >download.log 2>&1; then
    # A fresh machine may have no package lists yet.
    apt-get update -qq
    apt-get download $PACKAGES >download.log 2>&1 || { cat download.log >&2; exit 1; }
fi
for deb in ./*.deb; do
    dpkg -x "$deb" "$ROOT/root"
done
test -x "$ROOT/root/usr/libexec/sendmail/sendmail"
test -f "$ROOT/root/usr/share/sendmail/cf/m4/cf.m4"
echo "$PACKAGES" >"$STAMP"
echo "Sendmail unpacked into $ROOT/root"
