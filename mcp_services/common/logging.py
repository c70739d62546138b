"""Structured logging with structlog: console output locally, JSON in containers.

Every line carries an ISO-8601 UTC timestamp, the level, the service name and whatever is bound in
contextvars (e.g. the gRPC method), so a log aggregator can filter by field.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog

from mcp_services.common.config_schema import LoggingConfig


def configure_logging(cfg: LoggingConfig, service: str) -> None:
    """Configure structlog (and the stdlib root logger, for grpc and redis) once per process."""
    level = getattr(logging, cfg.level.upper())
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: Any
    if cfg.format == "json":
        shared.append(structlog.processors.format_exc_info)
        renderer = structlog.processors.JSONRenderer()
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    structlog.configure(
        processors=[*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(service=service)
    logging.basicConfig(level=max(level, logging.WARNING), stream=sys.stderr, force=True)


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    logger: structlog.stdlib.BoundLogger = structlog.get_logger(name)
    return logger
