"""structlog set up once for every service: JSON when not on a terminal, console on one.

Log lines carry ids (event, offer, customer pseudonym), topics, partitions and offsets, never a
card number, an e-mail address or a name. `redact_personal_data` is a last line of defence.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

import structlog
from opentelemetry import trace

from shared.settings import LogSettings

_CARD = re.compile(r"\b\d(?:[ -]?\d){11,18}\b")
_EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
_PERSONAL_KEYS = frozenset({"card_number", "other_card_number", "email", "first_name", "name"})


def redact_personal_data(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """Drop personal fields and mask card-like and e-mail-like text that slipped into a log line."""
    for key in list(event_dict):
        if key in _PERSONAL_KEYS:
            event_dict[key] = "[redacted]"
        elif isinstance(event_dict[key], str):
            value = _CARD.sub("[card]", event_dict[key])
            event_dict[key] = _EMAIL.sub("[email]", value)
    return event_dict


def add_trace_context(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """The OpenTelemetry trace and span ids of the line's context (a consumed batch, what it
    publishes), as the W3C `traceparent` writes them: the line and the trace find each other."""
    context = trace.get_current_span().get_span_context()
    if context.is_valid:
        event_dict.setdefault("trace_id", format(context.trace_id, "032x"))
        event_dict.setdefault("span_id", format(context.span_id, "016x"))
    return event_dict


_BROKER_CHATTER = (
    # Said by every subscriber as it starts: the services never create topics through
    # FastStream (`allow_auto_create_topics` off); the topics job or CRM_CREATE_TOPICS does.
    "Auto create topics is disabled",
    # Said at INFO by FastStream for each consumer task that ends, on every shutdown.
    "callback for Task-",
)


class _BrokerChatter(logging.Filter):
    """FastStream's routine lines on the broker's logger, lowered to DEBUG: they say nothing
    an operator acts on, on every start and stop."""

    def filter(self, record: logging.LogRecord) -> bool:
        event = record.msg.get("event") if isinstance(record.msg, dict) else record.msg
        if not (isinstance(event, str) and event.startswith(_BROKER_CHATTER)):
            return True
        if not logging.getLogger().isEnabledFor(logging.DEBUG):
            return False
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        if isinstance(record.msg, dict):
            record.msg["level"] = "debug"
        return True


def configure_logging(
    service: str, settings: LogSettings | None = None, *, log_file: Path | None = None
) -> None:
    """Configure structlog and the standard library's logging (aiokafka, faststream) alike.

    With `log_file`, every line goes to that file (JSON) instead of stderr: a command whose
    console is for people (`crm demo`) keeps its own log there."""
    settings = settings or LogSettings()
    as_json = log_file is not None or (
        settings.log_format == "json" or (settings.log_format == "auto" and not sys.stderr.isatty())
    )
    shared_processors: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        add_trace_context,
    ]
    # Redaction comes last in both chains, after the traceback is text: an exception's message
    # or a frame of its traceback may hold a card number or an e-mail address.
    last: list[structlog.typing.Processor] = [
        structlog.processors.format_exc_info,
        redact_personal_data,
    ]
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer()
        if as_json
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[
            *shared_processors,
            *last,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    # Standard-library records (aiokafka, faststream, uvicorn) bring their exception as
    # `exc_info`: formatted and redacted here, after the pre-chain, before rendering.
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared_processors,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *last, renderer],
    )
    handler: logging.Handler = (
        logging.StreamHandler(sys.stderr)
        if log_file is None
        else logging.FileHandler(log_file, encoding="utf-8")
    )
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level)
    logging.getLogger("aiokafka").setLevel(logging.WARNING)
    broker = logging.getLogger("crm.broker")
    broker.filters[:] = [f for f in broker.filters if not isinstance(f, _BrokerChatter)]
    broker.addFilter(_BrokerChatter())
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(service=service)


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    """A module logger; context bound with `structlog.contextvars` shows in every line."""
    logger: structlog.stdlib.BoundLogger = structlog.get_logger(name)
    return logger
