"""The Redis key scheme: hash tags, parse as the inverse of value, validated prefixes."""

from __future__ import annotations

import fnmatch
import string

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from redis.crc import key_slot

from securecache import ConfigurationError, ValidationError
from securecache.keys import WIRE_VERSION, KeyScheme, Kind, validate_prefix

ID_FIRST = string.ascii_letters + string.digits
ids = st.builds(
    lambda first, rest: first + rest,
    st.sampled_from(ID_FIRST),
    st.text(alphabet=ID_FIRST + "._:-", max_size=63),
)
prefixes = st.text(alphabet=ID_FIRST + "_.-", min_size=1, max_size=32)
kinds = st.sampled_from(list(Kind))


def test_key_layout_is_the_contract() -> None:
    """Keys read sc:v2:{ID}:security and sc:v2:{ID}:score, leases add :lease."""
    keys = KeyScheme()
    assert keys.value(Kind.SECURITY, "SEC000001") == "sc:v2:{SEC000001}:security"
    assert keys.value(Kind.SCORE, "SEC000001") == "sc:v2:{SEC000001}:score"
    assert keys.lease(Kind.SCORE, "SEC000001") == "sc:v2:{SEC000001}:score:lease"
    assert keys.pattern == f"sc:{WIRE_VERSION}:*"


@given(prefixes, ids)
def test_every_key_of_an_id_shares_one_cluster_slot(prefix: str, id_: str) -> None:
    """A security, its score and both leases hash to the slot of the id alone (hash tag)."""
    keys = KeyScheme(prefix)
    all_keys = [keys.value(k, id_) for k in Kind] + [keys.lease(k, id_) for k in Kind]
    assert {key_slot(k.encode()) for k in all_keys} == {key_slot(id_.encode())}
    for key in all_keys:
        assert f"{{{id_}}}" in key
        # The first "{...}" is the hash tag: nothing before it may contain a brace.
        assert "{" not in key[: key.index("{" + id_)]


@given(prefixes, kinds, ids)
def test_parse_inverts_value(prefix: str, kind: Kind, id_: str) -> None:
    """parse(value(kind, id)) gives back (kind, id) for any prefix, kind and id."""
    keys = KeyScheme(prefix)
    assert keys.parse(keys.value(kind, id_)) == (kind, id_)


@given(prefixes, kinds, ids)
def test_parse_rejects_lease_keys(prefix: str, kind: Kind, id_: str) -> None:
    """A lease key is not a value key: parse returns None for it."""
    keys = KeyScheme(prefix)
    assert keys.parse(keys.lease(kind, id_)) is None


@given(prefixes, prefixes, kinds, ids)
def test_parse_rejects_keys_of_another_prefix(
    prefix: str, other: str, kind: Kind, id_: str
) -> None:
    """Keys written under another prefix are never taken for this scheme's keys."""
    assume(prefix != other)
    assert KeyScheme(prefix).parse(KeyScheme(other).value(kind, id_)) is None


@pytest.mark.parametrize(
    "key",
    [
        "",
        "sc:v2:",
        "sc:v2:SEC1:score",
        "sc:v2:{SEC1}:",
        "sc:v2:{SEC1}:scores",
        "sc:v2:{bad id}:score",
        "sc:v2:{}:score",
        "sc:v1:{SEC1}:score",
        "other:sc:v2:{SEC1}:score",
        "sc:v2:{SEC1}score",
    ],
)
def test_parse_rejects_foreign_keys(key: str) -> None:
    """Anything that is not exactly a value key of this scheme parses to None."""
    assert KeyScheme("sc").parse(key) is None


@given(prefixes, kinds, ids)
def test_keys_match_the_acl_pattern(prefix: str, kind: Kind, id_: str) -> None:
    """Every key the scheme builds (values and leases) matches its ACL glob."""
    keys = KeyScheme(prefix)
    for key in (keys.value(kind, id_), keys.lease(kind, id_)):
        assert fnmatch.fnmatchcase(key, keys.pattern)


@given(prefixes)
def test_pattern_has_no_glob_characters_but_the_final_star(prefix: str) -> None:
    """The ACL pattern is a literal prefix plus '*', so it cannot reach other keys."""
    pattern = KeyScheme(prefix).pattern
    assert pattern.endswith(":*")
    assert not set(pattern[:-1]) & set("*?[]\\")


@given(prefixes, prefixes, kinds, ids)
def test_pattern_of_one_prefix_does_not_match_another(
    prefix: str, other: str, kind: Kind, id_: str
) -> None:
    """A user confined to one prefix cannot match the keys of a different prefix."""
    assume(prefix != other)
    assert not fnmatch.fnmatchcase(KeyScheme(other).value(kind, id_), KeyScheme(prefix).pattern)


@given(prefixes)
def test_valid_prefixes_are_accepted(prefix: str) -> None:
    """1-32 characters of [A-Za-z0-9_.-] are accepted as a prefix."""
    assert validate_prefix(prefix) == prefix
    assert KeyScheme(prefix).pattern.startswith(prefix + ":")


@pytest.mark.parametrize(
    "prefix",
    ["", "x" * 33, "sc:", "sc*", "s?", "[sc]", "{sc}", "s c", "sc\n", "sc/", "é", "a\\b"],
)
def test_bad_prefixes_are_refused(prefix: str) -> None:
    """Empty, over-long, glob, hash-tag, separator and non-ASCII prefixes are refused."""
    with pytest.raises(ConfigurationError):
        validate_prefix(prefix)
    with pytest.raises(ConfigurationError):
        KeyScheme(prefix)


@pytest.mark.parametrize("bad", ["", "bad id", "a}b", "{x}", "-x", "x" * 65])
def test_keys_refuse_bad_ids(bad: str) -> None:
    """An id that breaks the id rules cannot become a key (no hash-tag or glob injection)."""
    keys = KeyScheme()
    with pytest.raises(ValidationError):
        keys.value(Kind.SCORE, bad)
    with pytest.raises(ValidationError):
        keys.lease(Kind.SECURITY, bad)
