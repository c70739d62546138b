"""google.protobuf.Timestamp to and from the integers and floats the services keep.

Services keep times as Unix milliseconds (ints) or Unix seconds (floats); these are the only
conversions. Each raises ValueError for a time outside Timestamp's range (years 1 to 9999), which
only a bug produces: requests are range-checked where they are decoded.
"""

from __future__ import annotations

import time

from google.protobuf.timestamp_pb2 import Timestamp


def timestamp_of_ms(ms: int) -> Timestamp:
    """The Timestamp of Unix time `ms` (milliseconds)."""
    ts = Timestamp()
    ts.FromMilliseconds(ms)
    return ts


def ms_of_timestamp(ts: Timestamp) -> int:
    """Unix milliseconds of `ts` (sub-millisecond nanos are dropped, rounding down)."""
    return ts.ToMilliseconds()


def timestamp_of_s(unix_s: float) -> Timestamp:
    """The Timestamp of Unix time `unix_s` (seconds, to the nanosecond a float holds)."""
    ts = Timestamp()
    ts.FromNanoseconds(int(unix_s * 1e9))
    return ts


def timestamp_now() -> Timestamp:
    """The current time as a Timestamp."""
    ts = Timestamp()
    ts.FromNanoseconds(time.time_ns())
    return ts
