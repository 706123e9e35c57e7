"""The `crm` command line: run services, the demo, simulated traffic, the clock tick."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from shared.logging import configure_logging
from shared.settings import Settings

cli = typer.Typer(
    name="crm",
    help="crm-stream: loyalty-card checkouts to customer profiles, coupons and e-mail.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,  # settings hold secrets: never print locals
)
err = Console(stderr=True)

SERVICE_NAMES = ("ingest", "profiles", "offers", "notifier", "all")


def _fail(message: str, code: int = 2) -> typer.Exit:
    err.print(f"[bold red]crm:[/bold red] {message}")
    return typer.Exit(code)


@cli.command()
def run(
    service: Annotated[str, typer.Argument(help="ingest, profiles, offers, notifier or all")],
) -> None:
    """Run a service (or all four in one process) against CRM_KAFKA_BOOTSTRAP and CRM_STORE_URL."""
    from services.runtime import SERVICES, ConfigurationError, check_configuration, serve

    if service not in SERVICE_NAMES:
        raise _fail(f"unknown service {service!r}: choose one of {', '.join(SERVICE_NAMES)}")
    settings = Settings()
    configure_logging(service, settings.log)
    try:
        check_configuration(settings)
    except ConfigurationError as exc:
        raise _fail(str(exc)) from None
    names = SERVICES if service == "all" else (service,)
    asyncio.run(serve(names, settings))


@cli.command()
def demo(
    customers: Annotated[int, typer.Option(help="Customers in the simulation.")] = 300,
    stores: Annotated[int, typer.Option(help="Stores in the simulation.")] = 4,
    days: Annotated[int, typer.Option(help="Simulated days.")] = 28,
    seed: Annotated[int, typer.Option(help="Random seed: the same seed, the same traffic.")] = 7,
    data_dir: Annotated[
        Path | None, typer.Option(help="Folder for the store, outbox and logs.")
    ] = None,
) -> None:
    """The main job on the embedded default: broker, SQLite, four services, traffic, summary."""
    from services.demo import DemoOptions, demo_main
    from shared.simulation import SimulationConfig

    configure_logging("demo")
    folder = data_dir or Path(".crm-demo") / dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S")
    # The simulated weeks end today, so the coupons they earn are still valid to be e-mailed.
    start = dt.datetime.now(dt.UTC).date() - dt.timedelta(days=days)
    config = SimulationConfig(customers=customers, stores=stores, days=days, seed=seed, start=start)
    raise typer.Exit(demo_main(DemoOptions(data_dir=folder, simulation=config)))


@cli.command()
def simulate(
    customers: Annotated[int, typer.Option(help="Customers.")] = 300,
    stores: Annotated[int, typer.Option(help="Stores.")] = 4,
    days: Annotated[int, typer.Option(help="Days of traffic.")] = 28,
    start: Annotated[
        str | None, typer.Option(help="First day, YYYY-MM-DD (default: so that the last is today).")
    ] = None,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 7,
    rate: Annotated[float, typer.Option(help="Messages per second; 0 = as fast as possible.")] = 0,
    ticks: Annotated[bool, typer.Option(help="Publish the clock tick at each day's start.")] = True,
) -> None:
    """Publish realistic raw events to the configured Kafka (CRM_KAFKA_BOOTSTRAP)."""
    from services.traffic import open_producer, publish, tick
    from shared.simulation import SimulationConfig, by_day, generate

    settings = Settings()
    configure_logging("simulate", settings.log)
    if not settings.kafka.kafka_bootstrap:
        raise _fail("CRM_KAFKA_BOOTSTRAP is not set")
    config = SimulationConfig(
        customers=customers,
        stores=stores,
        days=days,
        seed=seed,
        start=dt.date.fromisoformat(start)
        if start
        else dt.datetime.now(dt.UTC).date() - dt.timedelta(days=days - 1),
    )

    async def go() -> int:
        producer = await open_producer(settings.kafka)
        total = 0
        try:
            for day, batch in by_day(generate(config)):
                if ticks:
                    await tick(producer, day)
                total += await publish(producer, batch, rate=rate or None)
        finally:
            await producer.stop()
        return total

    sent = asyncio.run(go())
    Console().print(f"published {sent} raw events")


@cli.command("tick")
def tick_command(
    date: Annotated[
        str | None,
        typer.Option("--date", help="The day that has begun, YYYY-MM-DD (default today)."),
    ] = None,
) -> None:
    """Publish the clock event `{"date": "YYYY-MM-DD"}` on crm.clock."""
    from services.traffic import open_producer, tick

    settings = Settings()
    configure_logging("tick", settings.log)
    if not settings.kafka.kafka_bootstrap:
        raise _fail("CRM_KAFKA_BOOTSTRAP is not set")
    try:
        day = (
            dt.date.fromisoformat(date)
            if date
            else dt.datetime.now(settings.calendar.zone_of(None)).date()
        )
    except ValueError:
        raise _fail(f"--date must be YYYY-MM-DD, not {date!r}") from None

    async def go() -> None:
        producer = await open_producer(settings.kafka)
        try:
            await tick(producer, day)
        finally:
            await producer.stop()

    asyncio.run(go())
    Console().print(f"clock: {day.isoformat()} has begun")


@cli.command("create-topics")
def create_topics() -> None:
    """Create the missing crm. topics with their partitions, retention and compaction."""
    from shared.kafka import ensure_topics

    settings = Settings()
    configure_logging("create-topics", settings.log)
    if not settings.kafka.kafka_bootstrap:
        raise _fail("CRM_KAFKA_BOOTSTRAP is not set")
    created = asyncio.run(ensure_topics(settings.kafka))
    Console().print(f"created {len(created)} topics: {', '.join(created) or '-'}")


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
