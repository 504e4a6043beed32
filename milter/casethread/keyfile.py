"""Token key files: reading them safely, generating them, and the default key of an index.

File format: one key per file, UTF-8 text, at most 4 KiB::

    # comment lines and blank lines are ignored
    id: 1
    key: 64 hexadecimal digits (32 bytes; at least 32 digits = 16 bytes are accepted)

The id (0..31) is what a token names, so it lives with the secret: a token signed by a key
verifies only while a key file with the same id and secret is configured. Rotation: generate a
file with a new id, list it first (it signs), keep the old one listed until its tokens no
longer matter, then remove it (its tokens then fail as ``X-Case-Token: invalid``).

A key file must be accessible by its owner only (mode 0600 or stricter); anything else is
refused with the command that fixes it. Key bytes never appear in a message, log line or repr.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import secrets
import stat
from collections.abc import Callable, Sequence
from pathlib import Path

from .core.settings import Settings
from .core.token import MAX_KEY_ID, MIN_SECRET_BYTES, Keyring

log = logging.getLogger("casethread")

DEFAULT_KEY_NAME = "token.key"
KEY_BYTES = 32
MAX_FILE_BYTES = 4096

_ID_LINE = re.compile(r"id\s*:\s*([0-9]{1,3})")
_KEY_LINE = re.compile(r"key\s*:\s*([0-9a-fA-F]+)")


class KeyFileError(Exception):
    """A key file cannot be used. The message names the file and the fix, never the key."""


class KeyFileExistsError(KeyFileError):
    """Generating a key file whose path is already taken (keys are never overwritten)."""


def _check_mode(path: Path, st: os.stat_result) -> None:
    if not stat.S_ISREG(st.st_mode):
        raise KeyFileError(f"token key file {path} is not a regular file")
    loose = stat.S_IMODE(st.st_mode) & 0o077
    if loose:
        raise KeyFileError(
            f"token key file {path} is accessible by group or others "
            f"(mode {stat.S_IMODE(st.st_mode):04o}); run: chmod 600 {path}"
        )


def _parse(path: Path, text: str) -> tuple[int, bytes]:
    key_id: int | None = None
    secret: bytes | None = None
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        # Messages name the line, never its content: it may be the secret.
        id_match = _ID_LINE.fullmatch(line)
        key_match = _KEY_LINE.fullmatch(line)
        if id_match:
            if key_id is not None:
                raise KeyFileError(f"token key file {path} line {number}: a second 'id:' line")
            key_id = int(id_match.group(1))
            if key_id > MAX_KEY_ID:
                raise KeyFileError(
                    f"token key file {path} line {number}: id {key_id} is outside 0..{MAX_KEY_ID}"
                )
        elif key_match:
            if secret is not None:
                raise KeyFileError(f"token key file {path} line {number}: a second 'key:' line")
            digits = key_match.group(1)
            if len(digits) % 2 or len(digits) < 2 * MIN_SECRET_BYTES:
                raise KeyFileError(
                    f"token key file {path} line {number}: the key must be an even number of "
                    f"hex digits, at least {2 * MIN_SECRET_BYTES}"
                )
            secret = bytes.fromhex(digits)
        else:
            raise KeyFileError(
                f"token key file {path} line {number}: expected 'id: N' or 'key: HEX'"
            )
    if key_id is None or secret is None:
        missing = "'id:'" if key_id is None else "'key:'"
        raise KeyFileError(f"token key file {path} has no {missing} line")
    return key_id, secret


def read_key_file(path: str | os.PathLike[str]) -> tuple[int, bytes]:
    """(key id, secret) from a key file, after checking that only its owner can access it."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOCTTY)
    except OSError as e:
        raise KeyFileError(f"cannot open token key file {path}: {e.strerror}") from None
    try:
        # fstat the open file, not the path: what is checked is what is read.
        _check_mode(path, os.fstat(fd))
        data = os.read(fd, MAX_FILE_BYTES + 1)
    except OSError as e:
        raise KeyFileError(f"cannot read token key file {path}: {e.strerror}") from None
    finally:
        os.close(fd)
    if len(data) > MAX_FILE_BYTES:
        raise KeyFileError(f"token key file {path} is larger than {MAX_FILE_BYTES} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise KeyFileError(f"token key file {path} is not UTF-8 text") from None
    return _parse(path, text)


def write_key_file(
    path: str | os.PathLike[str], key_id: int = 1, secret: bytes | None = None
) -> tuple[int, bytes]:
    """Create a key file (mode 0600) with a fresh random secret; never overwrites one.

    The file is written under a temporary name and hard-linked into place, so other processes
    see either no file or the complete one, and two concurrent callers cannot both win.
    """
    path = Path(path)
    if not 0 <= key_id <= MAX_KEY_ID:
        raise KeyFileError(f"token key id {key_id} is outside 0..{MAX_KEY_ID}")
    if secret is None:
        secret = secrets.token_bytes(KEY_BYTES)
    elif len(secret) < MIN_SECRET_BYTES:
        raise KeyFileError(f"a token key must be at least {MIN_SECRET_BYTES} bytes")
    text = (
        f"# casethread token key {key_id}. Keep it secret (mode 0600) and back it up:\n"
        "# tokens signed with it verify only while this id and key are configured.\n"
        f"id: {key_id}\n"
        f"key: {secret.hex()}\n"
    )
    if not path.name:  # '', '.' or '/': with_name would raise, and there is no file to make
        raise KeyFileError(f"cannot create token key file {str(path)!r}: that is a directory; "
                           "name the file")
    temp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except OSError as e:
        raise KeyFileError(f"cannot create token key file {path}: {e.strerror}") from None
    try:
        try:
            os.fchmod(fd, 0o600)  # umask can only remove bits; make the mode exact anyway
            with os.fdopen(fd, "w", encoding="utf-8", closefd=False) as out:
                out.write(text)
                out.flush()
                os.fsync(fd)
        finally:
            os.close(fd)
        os.link(temp, path)
    except FileExistsError:
        raise KeyFileExistsError(
            f"token key file {path} already exists; keys are never overwritten"
        ) from None
    except OSError as e:
        raise KeyFileError(f"cannot write token key file {path}: {e.strerror}") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
    _sync_directory(path.parent)
    return key_id, secret


def _sync_directory(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems refuse fsync on directories; the link is made regardless
    finally:
        os.close(fd)


def load_keyring(paths: Sequence[str | os.PathLike[str]]) -> Keyring:
    """A Keyring from key files; the first file's key signs new tokens."""
    if not paths:
        raise KeyFileError("no token key files given")
    keys: list[tuple[int, bytes]] = []
    origin: dict[int, Path] = {}
    for raw in paths:
        path = Path(raw)
        key_id, secret = read_key_file(path)
        if key_id in origin:
            raise KeyFileError(f"token key files {origin[key_id]} and {path} both have id {key_id}")
        origin[key_id] = path
        keys.append((key_id, secret))
    return Keyring(keys)


def _no_cases() -> int:
    return 0


def check_default_key_kept(index_dir: str | os.PathLike[str], held_cases: int) -> None:
    """Refuse to go on without `index_dir/token.key` once the index holds cases.

    A new key is right for a new index only. Beside cases it means the key was lost (only
    data.mdb restored, the file deleted): every token in mail already sent would fail, and a
    new key of the same id makes them look forged. So the operator decides, as OpenDKIM
    refuses to sign without its key rather than make one up.
    """
    directory = Path(index_dir)
    path = directory / DEFAULT_KEY_NAME
    if held_cases and not path.exists():
        cases = f"{held_cases} case" + ("s" if held_cases > 1 else "")
        raise KeyFileError(
            f"the index at {directory} holds {cases} but {path} is missing: restore it from "
            f"the backup, or run `casethread keygen {path}` to start a new key knowingly"
        )


def ensure_default_key(index_dir: str | os.PathLike[str], create: bool = True,
                       held_cases: Callable[[], int] = _no_cases) -> Keyring:
    """The keyring of `index_dir/token.key`, generating that file on first start.

    `held_cases` counts the cases of the index there, asked only when the file is missing: a
    key is generated for an index without cases only (`check_default_key_kept`). With `create`
    false (a dry run must not write), a missing file is a KeyFileError.
    """
    directory = Path(index_dir)
    path = directory / DEFAULT_KEY_NAME
    if not path.exists():
        check_default_key_kept(directory, held_cases())
        if create:
            _generate(path)
    return load_keyring([path])


def _generate(path: Path) -> None:
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as e:
        raise KeyFileError(f"cannot create directory {path.parent}: {e.strerror}") from None
    try:
        write_key_file(path)
        log.info("generated token key %s (id 1); back it up with the index", path)
    except KeyFileExistsError:
        pass  # another process generated it first: use theirs


def keyring_for(settings: Settings, create: bool = True,
                held_cases: Callable[[], int] = _no_cases) -> Keyring:
    """The configured key files, else the index's own `token.key` (made on first start, for
    an index holding no cases: see `ensure_default_key`)."""
    if settings.tokens.keys:
        return load_keyring(settings.tokens.keys)
    return ensure_default_key(settings.index.path, create, held_cases)


def describe_keys(settings: Settings, keyring: Keyring) -> str:
    """Which key ids sign and verify, and from which files (ids and paths only, never a key):
    logged at start and on reload, so a token that fails as `unknown-key` can be checked
    against it."""
    files = settings.tokens.keys or (str(Path(settings.index.path) / DEFAULT_KEY_NAME),)
    verifying = ", ".join(str(key_id) for key_id in keyring.key_ids)
    return (f"token keys: id {keyring.signing_key_id} signs, ids {verifying} verify "
            f"({', '.join(files)})")
