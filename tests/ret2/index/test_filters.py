"""Metadata filters (ret2.index.filters, ret2.index.metadata): every operator against a plain-Python evaluation of
the same filter over random metadata, bad filters refused naming their part, and Parquet round trips."""

import random

import numpy as np
import pytest

from ret2.index.filters import FilterError, check_filter, to_milvus
from ret2.index.metadata import part_table, read_parts, select, write_part


def _reference(where: dict, m: dict) -> bool:
    """The documented semantics, by hand: a comparison on a missing (or null) field is false."""
    out = True
    for key, value in where.items():
        if key == "$and":
            out &= all(_reference(w, m) for w in value)
        elif key == "$or":
            out &= any(_reference(w, m) for w in value)
        elif key == "$not":
            out &= not _reference(value, m)
        else:
            ops = value if isinstance(value, dict) else {"$eq": value}
            for op, v in ops.items():
                x = m.get(key)
                if op == "$exists":
                    out &= (x is not None) == v
                elif x is None:
                    out = False
                else:
                    out &= {"$eq": lambda: x == v, "$ne": lambda: x != v, "$gt": lambda: x > v,
                            "$gte": lambda: x >= v, "$lt": lambda: x < v, "$lte": lambda: x <= v,
                            "$in": lambda: x in v, "$nin": lambda: x not in v}[op]()  # fmt: skip
    return out


def _metadata(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        m = {}
        if rng.random() < 0.8:
            m["album"] = rng.choice(["trip", "home", "work", "zoo"])
        if rng.random() < 0.9:
            m["year"] = rng.randint(2015, 2025)
        if rng.random() < 0.7:
            m["stars"] = rng.choice([0.5, 1.0, 2.5, 4.0, 5.0])
        if rng.random() < 0.6:
            m["public"] = rng.random() < 0.5
        out.append(m)
    return out


FILTERS = [
    {"album": "trip"},
    {"album": {"$eq": "home"}},
    {"album": {"$ne": "trip"}},
    {"year": {"$gt": 2020}},
    {"year": {"$gte": 2020, "$lt": 2023}},
    {"stars": {"$lte": 2.5}},
    {"album": {"$gt": "home"}},  # strings compare lexicographically
    {"album": {"$in": ["trip", "zoo"]}},
    {"year": {"$nin": [2015, 2016, 2017]}},
    {"public": True},
    {"public": {"$ne": True}},
    {"stars": {"$exists": True}},
    {"stars": {"$exists": False}},
    {"$and": [{"album": "trip"}, {"year": {"$gte": 2020}}]},
    {"$or": [{"album": "trip"}, {"stars": {"$gt": 4}}]},
    {"$not": {"album": "trip"}},
    {"$not": {"$or": [{"year": {"$lt": 2018}}, {"public": False}]}},
    {"album": "trip", "public": {"$in": [True]}},
    {"nobody": "x"},  # a field no document has matches nothing...
    {"nobody": {"$ne": "x"}},  # ...$ne included
    {"$not": {"nobody": "x"}},  # and its complement matches everything
    {"year": {"$gt": 2019.5}},  # an int field against a float
]


@pytest.mark.parametrize("where", FILTERS, ids=[str(f) for f in FILTERS])
def test_every_operator_matches_a_plain_python_evaluation(where, tmp_path):
    parts = [_metadata(300, 0), _metadata(200, 1), [{}] * 50, [{"album": "trip", "extra": 3}] * 20]
    paths = []
    for i, part in enumerate(parts):
        paths.append(tmp_path / f"part-{i}.metadata.parquet")
        write_part(paths[-1], part)
    table = read_parts(paths, [len(p) for p in parts])
    every = [m for p in parts for m in p]
    expected = np.array([i for i, m in enumerate(every) if _reference(where, m)], np.int64)
    np.testing.assert_array_equal(select(table, where), expected)
    assert len(every) > len(expected) or where == {"$not": {"nobody": "x"}}


def test_the_reference_is_not_trivial():
    every = _metadata(300, 0)
    counts = [sum(_reference(w, m) for m in every) for w in FILTERS[:18]]
    assert all(0 < c < 300 for c in counts), counts


@pytest.mark.parametrize(
    "where, part",
    [
        ({"album": {"$regex": "t.*"}}, "$regex"),
        ({"$nor": [{"album": "x"}]}, "$nor"),
        ({"year": {"$gt": "2020"}}, "year"),  # a string against a numeric field
        ({"album": {"$lt": 3}}, "album"),  # a number against a string field
        ({"public": {"$gt": True}}, "$gt"),  # no ranges over booleans
        ({"album": {"$in": []}}, "$in"),
        ({"album": {"$in": ["a", 1]}}, "$in"),
        ({"album": {"$in": "trip"}}, "$in"),
        ({"album": None}, "$exists"),
        ({"album": ["trip"]}, "album"),
        ({"stars": {"$exists": "yes"}}, "$exists"),
        ({"$and": []}, "$and"),
        ({"$or": {"album": "x"}}, "$or"),
        ({"album": {}}, "album"),
        ({}, "non-empty"),
        ("album == 'trip'", "album == 'trip'"),
    ],
)
def test_bad_filters_are_refused_naming_the_part(where, part):
    table = part_table(_metadata(20, 0))
    with pytest.raises(FilterError, match=part.replace("$", r"\$")):
        select(table, where)


def test_metadata_of_mixed_types_is_refused_naming_the_field():
    with pytest.raises(ValueError, match="'year'"):
        part_table([{"year": 2020}, {"year": "last year"}])


def test_milvus_expressions():
    assert to_milvus({"album": "trip"}) == '(exists metadata["album"] and metadata["album"] == "trip")'
    assert to_milvus({"year": {"$gte": 2020, "$lt": 2023}}) == ('((exists metadata["year"] and metadata["year"] >= 2020) '
                                                                 'and (exists metadata["year"] and metadata["year"] < '
                                                                 '2023))')  # fmt: skip
    assert to_milvus({"a": {"$nin": ["x", 'say "hi"']}}) == ('(exists metadata["a"] and not (metadata["a"] == "x" or '
                                                              'metadata["a"] == "say \\"hi\\""))')  # fmt: skip
    assert to_milvus({"a": {"$in": [1, 2]}}) == '(exists metadata["a"] and (metadata["a"] == 1 or metadata["a"] == 2))'
    assert to_milvus({"$or": [{"p": True}, {"$not": {"s": {"$exists": True}}}]}) == (
        '((exists metadata["p"] and metadata["p"] == true) or (not exists metadata["s"]))')
    with pytest.raises(FilterError, match=r"\$near"):
        to_milvus({"a": {"$near": 1}})
    assert check_filter({"a": 1}) == {"a": 1}
