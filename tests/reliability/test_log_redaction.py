"""Logs never carry a card number or an e-mail address, not even inside an exception's message
or its traceback: redaction runs after the traceback is formatted, in structlog's chain and in
the one for standard-library loggers (faststream, aiokafka, uvicorn)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

CARD = "6035 1234 5678 9012"
EMAIL = "ana.lopez@example.com"

SCRIPT = textwrap.dedent(
    f"""
    import logging

    from shared.logging import configure_logging, get_logger

    configure_logging("test")

    def charge(card):
        raise ValueError("card " + card + " of {EMAIL} was declined")

    try:
        charge({CARD!r})
    except ValueError:
        get_logger("crm.test").exception("structlog_failed", customer="c-1")
    try:
        charge({CARD!r})
    except ValueError:
        logging.getLogger("faststream").exception("stdlib failed for {EMAIL}")
    """
)


def logged(log_format: str) -> bytes:
    """What a configured process writes to stderr, byte for byte."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRM_")}
    env["CRM_LOG_FORMAT"] = log_format
    process = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, capture_output=True, timeout=60, check=True
    )
    return process.stderr


@pytest.mark.parametrize("log_format", ["json", "console"])
def test_exceptions_are_logged_without_card_numbers_or_email_addresses(log_format: str) -> None:
    stderr = logged(log_format)
    # Both records are there, each with its traceback (the frame that raised, the error type).
    assert b"structlog_failed" in stderr
    assert b"stdlib failed for" in stderr
    assert stderr.count(b"ValueError") >= 2
    assert stderr.count(b"in charge") >= 2
    # ... and neither the card number (in any spelling) nor the e-mail address.
    for secret in (CARD, CARD.replace(" ", ""), EMAIL):
        assert secret.encode() not in stderr
    assert b"1234" not in stderr
    assert b"example.com" not in stderr
    assert b"[card]" in stderr
    assert b"[email]" in stderr
