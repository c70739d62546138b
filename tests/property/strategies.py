"""Hypothesis strategies for any protobuf message, built from its descriptor.

Values lean toward what breaks servers: empty and huge strings, unicode, NaN and infinities,
extreme integers, deep nesting cut at a bound, unknown enum numbers, long repeated fields.
"""

from __future__ import annotations

from typing import Any

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from hypothesis import strategies as st

F = FieldDescriptor

_INT32 = st.one_of(
    st.sampled_from([0, 1, -1, 2**31 - 1, -(2**31), 10_000, 65_536]),
    st.integers(-(2**31), 2**31 - 1),
)
_INT64 = st.one_of(
    st.sampled_from([0, 1, -1, 2**63 - 1, -(2**63), 2**53]), st.integers(-(2**63), 2**63 - 1)
)
_UINT32 = st.integers(0, 2**32 - 1)
_UINT64 = st.integers(0, 2**64 - 1)
_DOUBLE = st.one_of(
    st.sampled_from([0.0, -0.0, 1.0, 0.5, float("nan"), float("inf"), float("-inf"), 1e308]),
    st.floats(allow_nan=True, allow_infinity=True),
)
_FLOAT = st.one_of(
    st.sampled_from([0.0, 1.0, 0.5, float("nan"), float("inf"), -1.0]),
    st.floats(width=32, allow_nan=True, allow_infinity=True),
)
_TEXT = st.one_of(
    st.sampled_from(["", " ", "a", "ep-1", "concept:a", "../../etc/passwd", "\x00", "é" * 3]),
    st.text(max_size=40),
    st.text(alphabet="ab", min_size=200, max_size=300),
)
_BYTES = st.one_of(st.binary(max_size=64), st.just(b"\x00" * 2048))


def _scalar(field: Any) -> st.SearchStrategy[Any]:
    t = field.type
    if t in (F.TYPE_INT32, F.TYPE_SINT32, F.TYPE_SFIXED32):
        return _INT32
    if t in (F.TYPE_INT64, F.TYPE_SINT64, F.TYPE_SFIXED64):
        return _INT64
    if t in (F.TYPE_UINT32, F.TYPE_FIXED32):
        return _UINT32
    if t in (F.TYPE_UINT64, F.TYPE_FIXED64):
        return _UINT64
    if t == F.TYPE_DOUBLE:
        return _DOUBLE
    if t == F.TYPE_FLOAT:
        return _FLOAT
    if t == F.TYPE_BOOL:
        return st.booleans()
    if t == F.TYPE_STRING:
        return _TEXT
    if t == F.TYPE_BYTES:
        return _BYTES
    if t == F.TYPE_ENUM:
        numbers = [v.number for v in field.enum_type.values]
        return st.one_of(st.sampled_from(numbers), st.integers(-5, 99))  # open enums
    raise TypeError(f"no strategy for field type {t} ({field.full_name})")


def _is_map(field: Any) -> bool:
    return bool(
        field.type == F.TYPE_MESSAGE
        and field.message_type.GetOptions().map_entry
        and field.is_repeated
    )


def _is_repeated(field: Any) -> bool:
    return bool(field.is_repeated)


@st.composite
def _message(draw: st.DrawFn, descriptor: Any, cls: type[Message], depth: int) -> Message:
    msg = cls()
    for field in descriptor.fields:
        if not draw(st.booleans()):
            continue  # leave it unset: absent fields are the commonest input
        if field.type == F.TYPE_MESSAGE:
            if depth <= 0:
                continue
            if _is_map(field):
                key_f = field.message_type.fields_by_name["key"]
                value_f = field.message_type.fields_by_name["value"]
                if value_f.type == F.TYPE_MESSAGE:
                    continue
                entries = draw(st.dictionaries(_scalar(key_f), _scalar(value_f), max_size=4))
                getattr(msg, field.name).update(entries)
                continue
            sub_cls = type(getattr(cls(), field.name)) if not _is_repeated(field) else None
            if _is_repeated(field):
                container = getattr(msg, field.name)
                for _ in range(draw(st.integers(0, 3))):
                    item = container.add()
                    item.CopyFrom(draw(_message(field.message_type, type(item), depth - 1)))
            else:
                assert sub_cls is not None
                getattr(msg, field.name).CopyFrom(
                    draw(_message(field.message_type, sub_cls, depth - 1))
                )
            continue
        if _is_repeated(field):
            getattr(msg, field.name).extend(draw(st.lists(_scalar(field), max_size=6)))
        else:
            setattr(msg, field.name, draw(_scalar(field)))
    return msg


def messages(cls: type[Message], depth: int = 3) -> st.SearchStrategy[Message]:
    """Arbitrary instances of the generated message class ``cls``."""
    return _message(cls.DESCRIPTOR, cls, depth)


def corrupted(cls: type[Message]) -> st.SearchStrategy[bytes]:
    """Byte strings near valid encodings of ``cls``: valid ones cut, flipped and spliced, plus
    pure noise. For fuzzing the decoding path."""

    @st.composite
    def mutate(draw: st.DrawFn) -> bytes:
        data = bytearray(draw(messages(cls, 2)).SerializeToString())
        for _ in range(draw(st.integers(1, 4))):
            op = draw(st.sampled_from(["flip", "cut", "insert", "varint"]))
            if op == "flip" and data:
                i = draw(st.integers(0, len(data) - 1))
                data[i] ^= 1 << draw(st.integers(0, 7))
            elif op == "cut" and data:
                del data[draw(st.integers(0, len(data) - 1)) :]
            elif op == "insert":
                i = draw(st.integers(0, len(data)))
                data[i:i] = draw(st.binary(min_size=1, max_size=8))
            else:  # an overlong or unterminated varint
                data += b"\xff" * draw(st.integers(1, 11))
        return bytes(data)

    return st.one_of(mutate(), st.binary(max_size=256))
