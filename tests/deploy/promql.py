"""Which metric names a PromQL expression reads, and which names the fleet's code declares."""

from __future__ import annotations

import re

from mcp_services.common import metric_names
from mcp_services.gateway import metrics as gateway_metrics

# Series every Prometheus has, whatever it scrapes.
BUILTIN = {"up", "ALERTS"}


def exported_names() -> set[str]:
    """Every metric name the code declares, with the series names Prometheus derives from it."""
    declared = {v for k, v in vars(metric_names).items() if k.isupper() and isinstance(v, str)} | {
        v for k, v in vars(gateway_metrics).items() if k.isupper() and isinstance(v, str)
    }
    out = set()
    for n in declared:
        out |= {n, f"{n}_bucket", f"{n}_sum", f"{n}_count", f"{n}_total"}
    return out


def series_names(expr: str) -> set[str]:
    """Metric names an expression selects (identifiers that are not functions, keywords or
    labels)."""
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # ranges and subqueries
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    words = {
        m.group()
        for m in re.finditer(r"[a-zA-Z_:][a-zA-Z0-9_:]*", expr)
        if not expr[m.end() :].lstrip().startswith("(")  # a function call
        and not (m.start() and expr[m.start() - 1].isdigit())  # the "m" of 5m, the "e" of 1e3
    }
    keywords = {"and", "or", "unless", "by", "without", "on", "ignoring", "offset", "bool",
                "group_left", "group_right", "le", "Inf", "NaN"}  # fmt: skip
    return {w for w in words if w not in keywords and not re.fullmatch(r"[0-9.e]+", w)}
