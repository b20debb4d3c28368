"""Metadata filters: one syntax, a Mongo-style dict (Chroma's `where`), for every engine.

A filter is a dict. Its keys are document metadata fields or the logical operators `$and`, `$or` (a non-empty list
of filters) and `$not` (one filter); several keys in one dict must all hold (an implicit `$and`). A field's value is
a scalar, which the field must equal, or a dict of comparison operators, which must all hold:

    {"album": "trip"}                                   album == "trip"
    {"year": {"$gte": 2020, "$lt": 2024}}               2020 <= year < 2024
    {"tag": {"$in": ["cat", "dog"]}, "shop": {"$ne": "x"}}
    {"$or": [{"album": "trip"}, {"stars": {"$gt": 4}}]}
    {"$not": {"album": "trip"}}
    {"price": {"$exists": True}}

Operators: `$eq $ne $gt $gte $lt $lte` (a str, int, float or bool; ranges take str, int or float), `$in $nin` (a
non-empty list of such scalars, all str, all numbers or all bool), `$exists` (True / False).

A comparison is false on a document that lacks the field (the field missing from its metadata, or null), `$ne` and
`$nin` included: they match documents that have the field with another value. So a field no document has matches
nothing; `{"$not": ...}` is the plain complement (it matches the documents that lack the field), and `$exists`
asks for the field itself. A bad filter (an unknown operator, a value of the wrong kind, a string compared with a
numeric field, a malformed dict) is refused with a `FilterError` naming the offending part.

The same dict becomes a `pyarrow.compute` expression (`to_arrow`), evaluated over the metadata table in one
vectorised pass (`ret2.index.metadata`), and a Milvus boolean expression over a JSON field (`to_milvus`), which
Milvus evaluates itself; both give the same documents.

Why this syntax rather than SQL: it is what Chroma, MongoDB and Milvus' clients already take as data, it needs no
parser at all (Python's dict is the syntax tree), and it translates one node at a time into both Arrow and Milvus.
"""

from __future__ import annotations

import json
from typing import Any

COMPARISONS = ("$eq", "$ne", "$gt", "$gte", "$lt", "$lte")
MEMBERSHIP = ("$in", "$nin")
OPERATORS = (*COMPARISONS, *MEMBERSHIP, "$exists")
LOGICAL = ("$and", "$or", "$not")
_RANGES = ("$gt", "$gte", "$lt", "$lte")
_ARROW = {"$eq": "equal", "$ne": "not_equal", "$gt": "greater", "$gte": "greater_equal", "$lt": "less",
          "$lte": "less_equal"}  # fmt: skip
_MILVUS = {"$eq": "==", "$ne": "!=", "$gt": ">", "$gte": ">=", "$lt": "<", "$lte": "<="}


class FilterError(ValueError):
    """A filter that cannot be evaluated; the message names the offending part."""


def _kind(value: Any) -> str | None:
    """"bool", "number" or "str" for a scalar a filter may compare with, else None."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number" if value == value else None  # NaN compares with nothing
    if isinstance(value, str):
        return "str"
    return None


def _part(value: Any) -> str:
    return json.dumps(value, default=repr)


def _check_value(field: str, op: str, value: Any) -> str:
    """The kind of a comparison's value ("bool", "number", "str"), or a `FilterError`."""
    if op in MEMBERSHIP:
        if not isinstance(value, (list, tuple)) or not value:
            raise FilterError(f"filter part {_part({field: {op: value}})}: {op} takes a non-empty list of values")
        kinds = {_kind(v) for v in value}
        if None in kinds or len(kinds) > 1:
            raise FilterError(f"filter part {_part({field: {op: value}})}: {op}'s values must be all strings, all "
                              "numbers or all booleans")  # fmt: skip
        return kinds.pop()
    if op == "$exists":
        if not isinstance(value, bool):
            raise FilterError(f"filter part {_part({field: {op: value}})}: $exists takes true or false")
        return "bool"
    kind = _kind(value)
    if kind is None:
        raise FilterError(f"filter part {_part({field: {op: value}})}: {op} takes a string, a number or a boolean, "
                          f"got {type(value).__name__} {value!r}" + (" (use $exists for missing fields)" if value is None else ""))  # fmt: skip
    if kind == "bool" and op in _RANGES:
        raise FilterError(f"filter part {_part({field: {op: value}})}: {op} compares strings or numbers, not booleans")
    return kind


def conditions(where: Any):
    """Walk a filter, checking its form: yields nothing; raises `FilterError` at the first bad part. Used by
    `check_filter`; the translators walk the same tree."""
    if not isinstance(where, dict) or not where:
        raise FilterError(f"filter {_part(where)} must be a non-empty dict of fields and operators")
    for key, value in where.items():
        if not isinstance(key, str):
            raise FilterError(f"filter key {key!r} must be a string (a field name or one of {list(LOGICAL)})")
        if key in ("$and", "$or"):
            if not isinstance(value, (list, tuple)) or not value:
                raise FilterError(f"filter part {_part({key: value})}: {key} takes a non-empty list of filters")
            for sub in value:
                yield from conditions(sub)
        elif key == "$not":
            yield from conditions(value)
        elif key.startswith("$"):
            raise FilterError(f"filter part {_part({key: value})}: unknown operator {key!r}; logical operators are "
                              f"{list(LOGICAL)}, field operators {list(OPERATORS)}")  # fmt: skip
        elif isinstance(value, dict):
            if not value:
                raise FilterError(f"filter part {_part({key: value})}: an empty dict of operators")
            for op, operand in value.items():
                if op not in OPERATORS:
                    raise FilterError(f"filter part {_part({key: {op: operand}})}: unknown operator {op!r} on field "
                                      f"{key!r}; one of {list(OPERATORS)}")  # fmt: skip
                yield key, op, operand, _check_value(key, op, operand)
        else:
            yield key, "$eq", value, _check_value(key, "$eq", value)


def check_filter(where: dict) -> dict:
    """`where` if it is a well-formed filter, else a `FilterError` naming the bad part."""
    for _ in conditions(where):
        pass
    return where


def _join(parts: list, how: str):
    out = parts[0]
    for p in parts[1:]:
        out = (out & p) if how == "and" else (out | p)
    return out


# ----------------------------------------------------------------------------- Arrow


def _column_kind(arrow_type) -> str | None:
    import pyarrow as pa

    if pa.types.is_boolean(arrow_type):
        return "bool"
    if pa.types.is_integer(arrow_type) or pa.types.is_floating(arrow_type):
        return "number"
    if pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type):
        return "str"
    if pa.types.is_null(arrow_type):
        return "null"  # a field present in the schema whose every value is missing
    return None


def to_arrow(where: dict, schema):
    """A boolean `pyarrow.compute.Expression` of `where` over a table of `schema` (its columns: metadata fields).
    Two-valued: a comparison on a missing value is false, not null. Refuses a comparison of a value with a field of
    another kind (a string with a numeric field, ...), naming both."""
    import pyarrow.compute as pc

    check_filter(where)
    names = set(schema.names)

    def leaf(field: str, op: str, value: Any, kind: str):
        if op == "$exists":
            present = pc.field(field).is_valid() if field in names else pc.scalar(False)
            return present if value else ~present
        if field not in names:
            return pc.scalar(False)  # a field no document has matches nothing
        column_kind = _column_kind(schema.field(field).type)
        if column_kind == "null":
            return pc.scalar(False)
        if column_kind != kind:
            raise FilterError(f"filter part {_part({field: {op: value}})}: field {field!r} holds "
                              f"{schema.field(field).type} values, which cannot be compared with {kind} values")  # fmt: skip
        if op in MEMBERSHIP:
            test = pc.field(field).isin(list(value))
            test = test if op == "$in" else ~test
        else:
            test = getattr(pc, _ARROW[op])(pc.field(field), pc.scalar(value))
        return pc.if_else(pc.field(field).is_valid(), test, pc.scalar(False))  # false, not null, where missing

    def node(where: dict):
        parts = []
        for key, value in where.items():
            if key in ("$and", "$or"):
                parts.append(_join([node(sub) for sub in value], key[1:]))
            elif key == "$not":
                parts.append(~node(value))
            else:
                ops = value if isinstance(value, dict) else {"$eq": value}
                parts += [leaf(key, op, operand, _check_value(key, op, operand)) for op, operand in ops.items()]
        return _join(parts, "and")

    return node(where)


# ----------------------------------------------------------------------------- Milvus


def _literal(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)  # a double-quoted string with escapes, as Milvus reads it
    return repr(value)


def to_milvus(where: dict, field: str = "metadata") -> str:
    """A Milvus boolean expression of `where` over the JSON field `field` (`exists metadata["album"] and
    metadata["album"] == "trip"`), with the semantics of `to_arrow`: a comparison holds only where the key exists."""
    check_filter(where)

    def leaf(key: str, op: str, value: Any) -> str:
        path = f"{field}[{json.dumps(key)}]"
        if op == "$exists":
            return f"exists {path}" if value else f"not (exists {path})"
        if op in MEMBERSHIP:  # equalities: Milvus (Lite 3.2) takes `in` on a scalar field only, not on a JSON key
            equal = " or ".join(f"{path} == {_literal(v)}" for v in value)
            test = f"({equal})" if op == "$in" else f"not ({equal})"
        else:
            test = f"{path} {_MILVUS[op]} {_literal(value)}"
        # two-valued like the Arrow filter: Milvus gives a comparison on a missing key null, and `not null` is null
        # (no match), where a document without the field must match `$not` of a comparison on it
        return f"(exists {path} and {test})"

    def node(where: dict) -> str:
        parts = []
        for key, value in where.items():
            if key in ("$and", "$or"):
                parts.append("(" + f" {key[1:]} ".join(node(sub) for sub in value) + ")")
            elif key == "$not":
                parts.append(f"(not {node(value)})")
            else:
                ops = value if isinstance(value, dict) else {"$eq": value}
                parts += [leaf(key, op, operand) for op, operand in ops.items()]
        return parts[0] if len(parts) == 1 else "(" + " and ".join(parts) + ")"

    return node(where)
