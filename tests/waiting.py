"""Waiting on a condition with a deadline, never a bare sleep."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable


async def wait_for(condition: Callable[[], Awaitable[bool]], within: float = 60.0) -> None:
    """Poll `condition` every 0.2 s until it holds; fail the test when `within` seconds pass."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if await condition():
            return
        await asyncio.sleep(0.2)
    raise AssertionError("condition not met in time")
