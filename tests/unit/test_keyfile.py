"""casethread.keyfile: key files are created 0600, loose ones are refused, secrets never leak."""

from __future__ import annotations

import base64
import logging
import stat
from pathlib import Path

import pytest

from casethread.core.settings import IndexSettings, Settings, TokenSettings
from casethread.core.token import Keyring
from casethread.keyfile import (
    DEFAULT_KEY_NAME,
    KeyFileError,
    KeyFileExistsError,
    ensure_default_key,
    keyring_for,
    load_keyring,
    read_key_file,
    write_key_file,
)

SECRET = bytes(range(200, 232))


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def leaks(text: str, secret: bytes) -> bool:
    """Whether `text` shows the secret in any common spelling."""
    spellings = [
        secret.hex(),
        secret.hex().upper(),
        base64.b64encode(secret).decode(),
        repr(secret)[2:-1],
        secret.hex()[:16],
    ]
    return any(s in text for s in spellings)


def write_text(path: Path, text: str, file_mode: int = 0o600) -> Path:
    path.write_text(text, encoding="utf-8")
    path.chmod(file_mode)
    return path


def test_generated_file_is_0600_even_with_umask_0(tmp_path: Path, loose_umask: None) -> None:
    path = tmp_path / "token1.key"
    key_id, secret = write_key_file(path, key_id=1)
    assert mode(path) == 0o600
    assert key_id == 1 and len(secret) == 32
    assert read_key_file(path) == (1, secret)
    assert [p.name for p in tmp_path.iterdir()] == ["token1.key"]  # no temp file left


def test_generated_keys_differ(tmp_path: Path) -> None:
    _, one = write_key_file(tmp_path / "a.key")
    _, two = write_key_file(tmp_path / "b.key")
    assert one != two


def test_never_overwrites(tmp_path: Path) -> None:
    path = tmp_path / "token.key"
    _, first = write_key_file(path)
    with pytest.raises(KeyFileExistsError) as info:
        write_key_file(path)
    assert not leaks(str(info.value), first)
    assert read_key_file(path) == (1, first)


@pytest.mark.parametrize("loose", [0o644, 0o640, 0o604, 0o660, 0o606, 0o610])
def test_a_loose_key_file_is_refused_with_the_fix(tmp_path: Path, loose: int) -> None:
    path = tmp_path / "token.key"
    write_key_file(path, secret=SECRET)
    path.chmod(loose)
    with pytest.raises(KeyFileError) as info:
        read_key_file(path)
    message = str(info.value)
    assert f"chmod 600 {path}" in message
    assert f"{loose:04o}" in message
    assert not leaks(message, SECRET) and not leaks(repr(info.value), SECRET)
    path.chmod(0o600)
    assert read_key_file(path) == (1, SECRET)


def test_stricter_modes_are_accepted(tmp_path: Path) -> None:
    path = tmp_path / "token.key"
    write_key_file(path, secret=SECRET, key_id=7)
    path.chmod(0o400)
    assert read_key_file(path) == (7, SECRET)


def test_file_format(tmp_path: Path) -> None:
    text = f"# a comment\n\n  id : 12\nkey: {SECRET.hex().upper()}\n"
    path = write_text(tmp_path / "k.key", text)
    assert read_key_file(path) == (12, SECRET)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "id: 1\n",
        f"key: {SECRET.hex()}\n",
        f"id: 1\nkey: {SECRET.hex()}\nkey: {SECRET.hex()}\n",
        f"id: 1\nid: 2\nkey: {SECRET.hex()}\n",
        f"id: 32\nkey: {SECRET.hex()}\n",
        f"id: 1\nkey: {SECRET.hex()[:-1]}\n",  # odd number of digits
        f"id: 1\nkey: {SECRET.hex()[:30]}\n",  # too short
        f"id: 1\nkey: {SECRET.hex()[:-2]}zz\n",  # not hex
        f"id: 1\n{SECRET.hex()}\n",  # a bare secret line
        f"id: 1\nsecret= {base64.b64encode(SECRET).decode()}\n",
    ],
    ids=range(11),
)
def test_malformed_files_are_refused_without_showing_the_key(tmp_path: Path, text: str) -> None:
    path = write_text(tmp_path / "k.key", text)
    with pytest.raises(KeyFileError) as info:
        read_key_file(path)
    assert str(path) in str(info.value)
    assert not leaks(str(info.value), SECRET)
    # No chained exception (whose text might quote the file) is shown in a traceback.
    error = info.value
    assert error.__cause__ is None
    assert error.__context__ is None or error.__suppress_context__


def test_missing_binary_and_oversized_files(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="cannot open"):
        read_key_file(tmp_path / "absent.key")
    binary = tmp_path / "bin.key"
    binary.write_bytes(b"id: 1\nkey: \xff\xfe\n")
    binary.chmod(0o600)
    with pytest.raises(KeyFileError, match="not UTF-8"):
        read_key_file(binary)
    big = write_text(tmp_path / "big.key", "#" * 5000 + "\n")
    with pytest.raises(KeyFileError, match="larger"):
        read_key_file(big)
    with pytest.raises(KeyFileError, match="not a regular file"):
        read_key_file(tmp_path)


def test_load_keyring_first_file_signs(tmp_path: Path) -> None:
    old_id, old_secret = write_key_file(tmp_path / "old.key", key_id=1)
    write_key_file(tmp_path / "new.key", key_id=2)
    ring = load_keyring([tmp_path / "new.key", tmp_path / "old.key"])
    assert ring.signing_key_id == 2 and ring.key_ids == (2, 1)
    old_token = Keyring([(old_id, old_secret)]).make(31337)
    assert ring.verify(old_token) == 31337
    assert ring.make(5)[0] == "2"


def test_load_keyring_refuses_duplicate_ids(tmp_path: Path) -> None:
    write_key_file(tmp_path / "a.key", key_id=3)
    write_key_file(tmp_path / "b.key", key_id=3)
    with pytest.raises(KeyFileError, match="both have id 3"):
        load_keyring([tmp_path / "a.key", tmp_path / "b.key"])
    with pytest.raises(KeyFileError):
        load_keyring([])


def test_ensure_default_key_generates_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    index = tmp_path / "data" / "index"
    caplog.set_level(logging.DEBUG, logger="casethread")
    # The logger may not propagate once logsetup ran in this process; capture on it directly.
    logging.getLogger("casethread").addHandler(caplog.handler)
    try:
        first = ensure_default_key(index)
    finally:
        logging.getLogger("casethread").removeHandler(caplog.handler)
    path = index / DEFAULT_KEY_NAME
    assert mode(path) == 0o600
    assert first.signing_key_id == 1
    token = first.make(1000)
    key_id, secret = read_key_file(path)
    assert "generated token key" in caplog.text and not leaks(caplog.text, secret)
    second = ensure_default_key(index)  # a restart reads the same key
    assert second.verify(token) == 1000
    assert read_key_file(path) == (key_id, secret)
    assert not leaks(repr(second), secret) and not leaks(str(second), secret)


def test_ensure_default_key_refuses_a_loose_existing_file(tmp_path: Path) -> None:
    write_key_file(tmp_path / DEFAULT_KEY_NAME, secret=SECRET)
    (tmp_path / DEFAULT_KEY_NAME).chmod(0o644)
    with pytest.raises(KeyFileError) as info:
        ensure_default_key(tmp_path)
    assert f"chmod 600 {tmp_path / DEFAULT_KEY_NAME}" in str(info.value)
    assert (tmp_path / DEFAULT_KEY_NAME).read_text().count(SECRET.hex()) == 1  # untouched


def test_a_missing_default_key_beside_cases_is_refused_not_replaced(tmp_path: Path) -> None:
    """Only data.mdb restored, or the key deleted: a new key would fail every token in mail
    already sent (the same id 1 makes them look forged), so nothing is generated."""
    path = tmp_path / DEFAULT_KEY_NAME
    for create in (True, False):
        with pytest.raises(KeyFileError) as info:
            ensure_default_key(tmp_path, create=create, held_cases=lambda: 3)
        assert str(info.value) == (
            f"the index at {tmp_path} holds 3 cases but {path} is missing: restore it from the "
            f"backup, or run `casethread keygen {path}` to start a new key knowingly"
        )
        assert not path.exists()
    with pytest.raises(KeyFileError, match="holds 1 case but"):
        ensure_default_key(tmp_path, held_cases=lambda: 1)
    # An index without cases gets its key; an existing key is read without counting.
    ring = ensure_default_key(tmp_path, held_cases=lambda: 0)
    counted = []
    again = ensure_default_key(tmp_path, held_cases=lambda: counted.append(1) or 5)
    assert again.verify(ring.make(7)) == 7 and not counted


def test_configured_key_files_need_no_index_key_beside_cases(tmp_path: Path) -> None:
    key = tmp_path / "etc" / "token-2.key"
    key.parent.mkdir()
    write_key_file(key, 2, SECRET)
    settings = Settings(index=IndexSettings(path=str(tmp_path / "index")),
                        tokens=TokenSettings(keys=(str(key),)))
    ring = keyring_for(settings, held_cases=lambda: 5)
    assert ring.signing_key_id == 2
    assert not (tmp_path / "index" / DEFAULT_KEY_NAME).exists()


def test_ensure_default_key_without_create_writes_nothing(tmp_path: Path) -> None:
    index = tmp_path / "index"
    with pytest.raises(KeyFileError, match="cannot open"):
        ensure_default_key(index, create=False)
    assert not index.exists()
    ring = ensure_default_key(index)
    assert ensure_default_key(index, create=False).verify(ring.make(9)) == 9
