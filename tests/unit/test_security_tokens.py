"""fogline.security: the tokens file, constant-time lookup, the store's reload, the bearer header."""

from __future__ import annotations

import stat

import pytest

from fogline.errors import ConfigError
from fogline.security import (
    TokenStore,
    add_token,
    bearer_token,
    hash_token,
    load_tokens,
    new_token,
    parse_tokens,
)

pytestmark = pytest.mark.unit


def test_new_tokens_are_long_random_and_url_safe():
    tokens = {new_token() for _ in range(50)}
    assert len(tokens) == 50
    for token in tokens:
        assert len(token) >= 43  # 256 bits in base64
        assert set(token) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


def test_parse_maps_token_to_device_and_skips_comments():
    a, b = new_token(), new_token()
    text = f"# fleet tokens\n\ncam-001 {hash_token(a)}  # the first camera\ncam-002 {hash_token(b).upper()}\n"
    tokens = parse_tokens(text)
    assert tokens.devices == ("cam-001", "cam-002")
    assert tokens.device_of(a) == "cam-001"
    assert tokens.device_of(b) == "cam-002"
    assert tokens.device_of("nope") is None
    assert tokens.device_of("") is None


@pytest.mark.parametrize(
    ("line", "words"),
    [
        ("cam-001", "two fields"),
        ("cam-001 abc", "SHA-256 hex"),
        ("cam 001 " + "a" * 64, "two fields"),
        ("-bad " + "a" * 64, "device id"),
    ],
)
def test_malformed_lines_name_the_line(line, words):
    with pytest.raises(ConfigError) as err:
        parse_tokens(f"# header\n{line}\n", source="tokens.txt")
    assert "tokens.txt:2:" in str(err.value)
    assert words in str(err.value)


def test_duplicate_device_or_hash_is_refused():
    digest = hash_token("x")
    with pytest.raises(ConfigError, match="already listed on line 1"):
        parse_tokens(f"a {digest}\na {hash_token('y')}\n")
    with pytest.raises(ConfigError, match="same token hash"):
        parse_tokens(f"a {digest}\nb {digest}\n")


def test_add_token_creates_a_private_file_and_refuses_a_duplicate(tmp_path):
    path = tmp_path / "tokens"
    token = add_token(path, "cam-001")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert token not in path.read_text()
    assert load_tokens(path).device_of(token) == "cam-001"
    second = add_token(path, "cam-002")
    assert load_tokens(path).device_of(second) == "cam-002"
    with pytest.raises(ConfigError, match="--replace"):
        add_token(path, "cam-001")
    fresh = add_token(path, "cam-001", replace=True)
    tokens = load_tokens(path)
    assert tokens.device_of(fresh) == "cam-001"
    assert tokens.device_of(token) is None
    assert tokens.device_of(second) == "cam-002"


def test_store_reload_keeps_the_last_good_set(tmp_path):
    path = tmp_path / "tokens"
    token = add_token(path, "cam-001")
    store = TokenStore(path)
    path.write_text("this is not a tokens file\n")
    error = store.reload()
    assert error is not None and ":1:" in str(error)
    assert store.tokens.device_of(token) == "cam-001"
    path.unlink()
    assert store.reload() is not None
    assert store.tokens.device_of(token) == "cam-001"
    other = add_token(path, "cam-002")
    assert store.reload() is None
    assert store.tokens.device_of(token) is None
    assert store.tokens.device_of(other) == "cam-002"


def test_unreadable_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read the tokens file"):
        load_tokens(tmp_path / "missing")


@pytest.mark.parametrize(
    ("metadata", "expected"),
    [
        ((), (None, "missing")),
        ((("authorization", "Bearer abc"),), ("abc", None)),
        ((("authorization", "bearer   abc "),), ("abc", None)),
        ((("authorization", "Basic abc"),), (None, "malformed")),
        ((("authorization", "Bearer"),), (None, "malformed")),
        ((("authorization", "Bearer a"), ("authorization", "Bearer b")), (None, "malformed")),
    ],
)
def test_bearer_token(metadata, expected):
    assert bearer_token(metadata) == expected
