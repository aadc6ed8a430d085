"""The bytes-bounded store: capacity, eviction callback, variants and purge
indexes, with a Hypothesis state test that the indexes never drift."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.eviction import POLICIES, make_policy
from edge.store import Store


def make_store(capacity: int = 100, max_object: int = 60, policy: str = "lru") -> Store[str]:
    return Store(capacity, make_policy(policy), max_object)


def test_put_and_variants_newest_first() -> None:
    store = make_store()
    assert store.put(("h", "/a", "gzip"), "A1", 10)
    assert store.put(("h", "/a", "br"), "A2", 10)
    assert [v for _, v in store.variants("h", "/a")] == ["A2", "A1"]
    assert (len(store), store.bytes) == (2, 20)


def test_replacing_a_slot_recharges_its_size() -> None:
    store = make_store()
    store.put(("h", "/a", None), "old", 30)
    store.put(("h", "/a", None), "new", 5)
    assert store.variants("h", "/a") == [(None, "new")]
    assert store.bytes == 5


def test_object_over_limit_is_refused_and_nothing_is_evicted() -> None:
    store = make_store(capacity=100, max_object=60)
    store.put(("h", "/small", None), "s", 50)
    assert not store.put(("h", "/big", None), "b", 61)
    assert len(store) == 1
    assert store.fits(60) and not store.fits(61)


def test_object_limit_never_exceeds_capacity() -> None:
    store = Store[str](50, make_policy("lru"), max_object_bytes=1000)
    assert not store.put(("h", "/a", None), "x", 51)


def test_eviction_makes_room_and_reports_count() -> None:
    evicted: list[int] = []
    store = Store[str](100, make_policy("lru"), 100, on_evict=evicted.append)
    for i in range(4):
        store.put(("h", f"/{i}", None), str(i), 30)
    assert evicted == [1]  # the fourth needed one eviction: the least recently used
    assert [t for t in ("/0", "/1", "/2", "/3") if store.variants("h", t)] == ["/1", "/2", "/3"]
    store.touch(("h", "/1", None))
    store.put(("h", "/big", None), "b", 70)
    assert evicted == [1, 2]  # 90 + 70 > 100: two go, the recently used /1 stays
    assert store.variants("h", "/1") == [(None, "1")]
    assert store.bytes == 100


def test_too_many_variants_drop_the_oldest_without_counting_evictions() -> None:
    evicted: list[int] = []
    store = Store[str](1000, make_policy("sieve"), 100, on_evict=evicted.append, max_variants=2)
    for lang in ("en", "de", "fr"):
        store.put(("h", "/page", lang), lang, 10)
    assert [v for _, v in store.variants("h", "/page")] == ["fr", "de"]
    assert evicted == []


def test_remove_url_removes_every_variant() -> None:
    store = make_store()
    store.put(("h", "/a", 1), "x", 1)
    store.put(("h", "/a", 2), "y", 1)
    store.put(("h", "/ab", 1), "z", 1)
    assert store.remove_url("h", "/a") == 2
    assert store.remove_url("h", "/a") == 0
    assert len(store) == 1


def test_remove_prefix_is_per_host() -> None:
    store = make_store()
    store.put(("a.example", "/img/1", None), "1", 1)
    store.put(("a.example", "/img/2", None), "2", 1)
    store.put(("a.example", "/css/1", None), "3", 1)
    store.put(("b.example", "/img/1", None), "4", 1)
    assert store.remove_prefix("a.example", "/img/") == 2
    assert {k[:2] for k in store.slot_keys()} == {("a.example", "/css/1"), ("b.example", "/img/1")}


def test_remove_tag_removes_tagged_slots_only() -> None:
    store = make_store()
    store.put(("h", "/u/1", None), "1", 1, tags=["user-1", "users"])
    store.put(("h", "/u/2", None), "2", 1, tags=["user-2", "users"])
    store.put(("h", "/x", None), "3", 1)
    assert store.remove_tag("user-1") == 1
    assert store.tagged("users") == {("h", "/u/2", None)}
    assert store.remove_tag("users") == 1
    assert store.remove_tag("users") == 0
    assert [k for k in store.slot_keys()] == [("h", "/x", None)]


def test_invalid_limits_are_rejected() -> None:
    with pytest.raises(ValueError):
        Store[str](0, make_policy("lru"), 10)


slot_keys = st.tuples(
    st.sampled_from(["a", "b"]), st.sampled_from(["/", "/x", "/x/y", "/z"]), st.integers(0, 3)
)
operations = st.lists(
    st.one_of(
        st.tuples(st.just("put"), slot_keys, st.integers(0, 70), st.sets(st.sampled_from("pqr"))),
        st.tuples(st.just("touch"), slot_keys),
        st.tuples(st.just("remove"), slot_keys),
        st.tuples(st.just("url"), slot_keys),
        st.tuples(st.just("prefix"), st.sampled_from(["a", "b"]), st.sampled_from(["/", "/x"])),
        st.tuples(st.just("tag"), st.sampled_from("pqr")),
    ),
    max_size=80,
)


@pytest.mark.parametrize("policy", POLICIES)
@settings(max_examples=150, deadline=None)
@given(ops=operations)
def test_capacity_and_indexes_stay_consistent(policy: str, ops: list[tuple[object, ...]]) -> None:
    evictions: list[int] = []
    store = Store[int](100, make_policy(policy), 60, on_evict=evictions.append, max_variants=3)
    for op in ops:
        apply(store, op)
        assert store.bytes <= store.capacity_bytes
        check_indexes(store)
    assert all(n > 0 for n in evictions)


def apply(store: Store[int], op: tuple[object, ...]) -> None:
    kind = op[0]
    if kind == "put":
        _, key, size, tags = op
        assert isinstance(key, tuple) and isinstance(size, int) and isinstance(tags, set)
        stored = store.put(key, size, size, sorted(tags))
        assert stored == (size <= 60)
        if stored:
            assert (key[2], size) in store.variants(key[0], key[1])
    elif kind == "touch":
        key = op[1]
        assert isinstance(key, tuple)
        if key in set(store.slot_keys()):
            store.touch(key)
    elif kind == "remove":
        key = op[1]
        assert isinstance(key, tuple)
        store.remove(key)
        assert key not in set(store.slot_keys())
    elif kind == "url":
        key = op[1]
        assert isinstance(key, tuple)
        store.remove_url(key[0], key[1])
        assert store.variants(key[0], key[1]) == []
    elif kind == "prefix":
        host, prefix = op[1], op[2]
        assert isinstance(host, str) and isinstance(prefix, str)
        store.remove_prefix(host, prefix)
        assert not any(k[0] == host and k[1].startswith(prefix) for k in store.slot_keys())
    else:
        tag = op[1]
        assert isinstance(tag, str)
        store.remove_tag(tag)
        assert store.tagged(tag) == frozenset()


def check_indexes(store: Store[int]) -> None:
    keys = set(store.slot_keys())
    assert len(keys) == len(store)
    # Each value is its own size here, so the byte count is recomputable.
    by_url: dict[tuple[str, str], list[object]] = {}
    for host, target, variant in keys:
        by_url.setdefault((host, target), []).append(variant)
    total = 0
    for (host, target), variants in by_url.items():
        listed = store.variants(host, target)
        assert sorted(v for v, _ in listed) == sorted(variants)  # type: ignore[type-var]
        assert len(listed) <= 3
        total += sum(size for _, size in listed)
    assert total == store.bytes
    for tag in "pqr":
        assert store.tagged(tag) <= keys
