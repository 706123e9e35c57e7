"""The `crm` command line: run services, the demo, simulated traffic, the clock tick."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
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


def _fail(message: str, code: int = 2) -> typer.Exit:
    err.print(f"[bold red]crm:[/bold red] {message}", soft_wrap=True)
    return typer.Exit(code)


@cli.command()
def run(
    service: Annotated[
        str, typer.Argument(help="ingest, profiles, offers, notifier, reports or all")
    ],
) -> None:
    """Run a service (or all of them in one process) against CRM_KAFKA_BOOTSTRAP and CRM_STORE_URL."""
    from crm.registry import BY_NAME, SERVICES
    from shared.keys import WeakSecret, require_strong_secrets
    from shared.runtime import ConfigurationError, check_configuration, run_forever

    if service != "all" and service not in BY_NAME:
        raise _fail(f"unknown service {service!r}: choose one of {', '.join([*BY_NAME, 'all'])}")
    specs = SERVICES if service == "all" else (BY_NAME[service],)
    settings = Settings()
    configure_logging(service, settings.log)
    try:
        check_configuration(settings)
        require_strong_secrets((s for spec in specs for s in spec.secrets), settings)
    except (ConfigurationError, WeakSecret) as exc:
        raise _fail(str(exc)) from None
    run_forever(specs, settings)


@cli.command()
def demo(
    customers: Annotated[int, typer.Option(help="Customers in the simulation.")] = 300,
    stores: Annotated[int, typer.Option(help="Stores in the simulation.")] = 4,
    days: Annotated[int, typer.Option(help="Simulated days.")] = 28,
    seed: Annotated[int, typer.Option(help="Random seed: the same seed, the same traffic.")] = 7,
    history_days: Annotated[
        int,
        typer.Option(
            help="Days of sparse history before the simulated days (anniversaries, win-backs)."
        ),
    ] = 400,
    serve: Annotated[
        bool, typer.Option("--serve", help="Keep the web page up on localhost afterwards.")
    ] = False,
    port: Annotated[int, typer.Option(help="Port of the web page with --serve.")] = 8080,
    data_dir: Annotated[
        Path | None, typer.Option(help="Folder for the store, outbox and logs.")
    ] = None,
    store: Annotated[
        str,
        typer.Option(
            help="sqlite (the embedded default) or mongodb (the PyMongo code path against an "
            "embedded MongoDB-wire test server; needs the development extras)."
        ),
    ] = "sqlite",
) -> None:
    """The main job on the embedded default: broker, SQLite, five services, traffic, summary."""
    from crm.demo import DemoOptions, demo_main
    from crm.simulation import SimulationConfig

    folder = data_dir or Path(".crm-demo") / dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S")
    # The console is for people: the demo's own log lines go to a file beside the services'.
    folder.mkdir(parents=True, exist_ok=True)
    configure_logging("demo", log_file=folder / "demo.log")
    # The simulated weeks end today, so the coupons they earn are still valid to be e-mailed.
    start = dt.datetime.now(dt.UTC).date() - dt.timedelta(days=days)
    config = SimulationConfig(
        customers=customers,
        stores=stores,
        days=days,
        seed=seed,
        start=start,
        history_days=history_days,
    )
    if store not in ("sqlite", "mongodb"):
        raise _fail(f"--store must be sqlite or mongodb, not {store!r}")
    options = DemoOptions(
        data_dir=folder,
        simulation=config,
        serve=serve,
        port=port,
        store="mongodb" if store == "mongodb" else "sqlite",
    )
    raise typer.Exit(demo_main(options))


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
    from crm.simulation import SimulationConfig, by_day, generate
    from crm.traffic import open_producer, publish, tick

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


@cli.command("report")
def report_command(
    name: Annotated[str, typer.Argument(help="campaigns, products, stores, segments or sentiment")],
    output: Annotated[str, typer.Option("--format", help="table, csv or json.")] = "table",
    as_of: Annotated[
        str | None, typer.Option(help="Last day reported, YYYY-MM-DD (default: latest data).")
    ] = None,
    since: Annotated[
        str | None,
        typer.Option(help="First date of the segments or sentiment report, YYYY-MM-DD."),
    ] = None,
    weeks: Annotated[
        int | None,
        typer.Option(
            min=1,
            max=520,
            help="campaigns: the last N campaign weeks (default: every offer); products: weeks "
            "of checkouts for what is bought together (default CRM_AFFINITY_WEEKS, 4).",
        ),
    ] = None,
) -> None:
    """Print a report of the reports read model in CRM_STORE_URL (table, CSV or JSON)."""
    from rich.table import Table

    from services.reports.app import build_report, report_csv
    from services.reports.domain import REPORT_NAMES, tables_of
    from services.reports.settings import ReportsSettings
    from services.reports.static import load_facts

    settings = Settings()
    configure_logging("report", settings.log)
    if name not in REPORT_NAMES:
        raise _fail(f"unknown report {name!r}: choose one of {', '.join(REPORT_NAMES)}")
    if output not in {"table", "csv", "json"}:
        raise _fail("--format must be table, csv or json")
    if not settings.store.store_url:
        raise _fail("CRM_STORE_URL is not set")
    try:
        day = dt.date.fromisoformat(as_of) if as_of else None
        first = dt.date.fromisoformat(since) if since else None
    except ValueError:
        raise _fail("dates must be YYYY-MM-DD") from None
    facts = asyncio.run(load_facts(settings.store.store_url))
    built = build_report(name, facts, ReportsSettings(), as_of=day, since=first, weeks=weeks)
    out = Console()
    if output == "json":
        print(built.model_dump_json(indent=2))
    elif output == "csv":
        print(report_csv(built), end="")
    else:
        for table in tables_of(built):
            cells = [["" if v is None else str(v) for v in row] for row in table.rows]
            if len(cells) == 1 and len(column_groups(table.columns, cells, out.width)) > 1:
                # One wide row (a headline): one line per figure reads better than columns.
                cells = [[c, v] for c, v in zip(table.columns, cells[0], strict=True)]
                table = type(table)(table.title, ["what", "value"], cells)
            parts = column_groups(table.columns, cells, out.width)
            for n, group in enumerate(parts, start=1):
                more = f" ({n} of {len(parts)})" if len(parts) > 1 else ""
                rich_table = Table(title=f"{table.title}{more}")
                for i in group:
                    rich_table.add_column(table.columns[i], no_wrap=True)
                for row in cells:
                    rich_table.add_row(*(row[i] for i in group))
                out.print(rich_table)


def column_groups(columns: list[str], rows: list[list[str]], width: int) -> list[list[int]]:
    """The columns of a table in groups that each fit `width` terminal columns, whole cells and
    headers (no "…"): the identifying columns (the fewest leading ones whose values tell the
    rows apart, at most three) start every group, the others follow in order."""

    def span(i: int) -> int:  # a column's width in a rich table: cell, padding and rule
        return max([len(columns[i]), *(len(row[i]) for row in rows)]) + 3

    keys = 1
    while keys < min(3, len(columns)) and len({tuple(r[:keys]) for r in rows}) < len(rows):
        keys += 1
    lead = list(range(min(keys, len(columns))))
    groups: list[list[int]] = []
    current = list(lead)
    for i in range(len(lead), len(columns)):
        if len(current) > len(lead) and 1 + sum(span(c) for c in [*current, i]) > width:
            groups.append(current)
            current = list(lead)
        current.append(i)
    groups.append(current)
    return groups


@cli.command("tick")
def tick_command(
    date: Annotated[
        str | None,
        typer.Option("--date", help="The day that has begun, YYYY-MM-DD (default today)."),
    ] = None,
) -> None:
    """Publish the clock event `{"date": "YYYY-MM-DD"}` on crm.clock."""
    from crm.traffic import open_producer, tick

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


@cli.command()
def bench(
    quick: Annotated[bool, typer.Option(help="A small run, a few minutes.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    checkouts: Annotated[
        int | None, typer.Option(help="Checkouts per burst (default 50,000; quick 4,000).")
    ] = None,
    customers: Annotated[
        tuple[int, int] | None,
        typer.Option(
            help="The small and the large population (default 10000 1000000; quick 1000 10000)."
        ),
    ] = None,
    step_seconds: Annotated[
        float | None,
        typer.Option(help="Length of one paced run of the capacity search (default 10 s)."),
    ] = None,
    step_checkouts: Annotated[
        int | None,
        typer.Option(help="Checkouts of one paced run at most (default 20,000; quick 6,000)."),
    ] = None,
    latency_checkouts: Annotated[
        int | None,
        typer.Option(help="Checkouts of the latency phase (default 10,000; quick 2,000)."),
    ] = None,
    till_rate: Annotated[
        float, typer.Option(help="Paced load of the till phase, coupon API requests/s.")
    ] = 200.0,
    till_requests: Annotated[
        int | None, typer.Option(help="Requests of the till phase (default 6,000; quick 1,000).")
    ] = None,
    seed: Annotated[int, typer.Option(help="Random seed of the generated traffic.")] = 11,
    data_dir: Annotated[
        Path | None, typer.Option(help="Keep stores and logs here (default: a temp folder).")
    ] = None,
    store: Annotated[
        str,
        typer.Option(
            help="sqlite, or mongodb: the PyMongo code path against an embedded MongoDB-wire "
            "test server (its figures are not a production mongod's)."
        ),
    ] = "sqlite",
) -> None:
    """Benchmark: one-hop and three-hop pass-throughs, ingest, pipeline, sustainable rate and
    latency at half of it, growth, the till's coupon API; checks its result."""
    from crm.bench import BenchOptions, bench_main

    configure_logging("bench")
    if store not in ("sqlite", "mongodb"):
        raise _fail(f"--store must be sqlite or mongodb, not {store!r}")
    options = (BenchOptions.quick() if quick else BenchOptions()).with_overrides(
        checkouts=checkouts,
        populations=customers,
        step_seconds=step_seconds,
        step_checkouts=step_checkouts,
        latency_checkouts=latency_checkouts,
        till_rate=till_rate,
        till_requests=till_requests,
        seed=seed,
        keep_dir=data_dir,
        store="mongodb" if store == "mongodb" else "sqlite",
    )
    raise typer.Exit(bench_main(options, as_json=as_json))


@cli.command("create-topics")
def create_topics(
    fix: Annotated[
        bool,
        typer.Option(
            "--fix",
            help="Set the configs (retention, compaction, min.insync.replicas) of existing "
            "topics to what the code expects. Partition counts are never changed.",
        ),
    ] = False,
) -> None:
    """Create the missing crm. topics with their partitions, retention and compaction, and
    check the existing ones: every difference is listed, and the exit code is 1 while any
    remains."""
    from shared.kafka import (
        PARTITIONS,
        REPLICATION,
        KafkaConfigError,
        TopicCheckError,
        reconcile_topics,
    )

    settings = Settings()
    configure_logging("create-topics", settings.log)
    if not settings.kafka.kafka_bootstrap:
        raise _fail("CRM_KAFKA_BOOTSTRAP is not set")
    try:
        report = asyncio.run(reconcile_topics(settings.kafka, fix=fix))
    except (KafkaConfigError, TopicCheckError) as exc:
        raise _fail(str(exc)) from None
    out = Console()
    out.print(f"created {len(report.created)} topics: {', '.join(report.created) or '-'}")
    for difference in report.fixed:
        out.print(f"fixed: {difference}", soft_wrap=True)
    if not report.differences:
        out.print("every existing topic has the partitions and configs the code expects")
        return
    for difference in report.differences:
        hint = "" if difference.alterable else " (not changed by --fix)"
        err.print(f"differs: {difference}{hint}", soft_wrap=True)
    settings_short = {d.setting for d in report.differences if not d.alterable}
    if PARTITIONS in settings_short:
        err.print(
            "Partitions are never added here: a key's partition is its hash modulo the "
            "partition count, so more partitions send most customers' later events to another "
            "partition, read out of order with their earlier ones. Create a new topic and "
            "migrate instead (docs/operate.md, Topics).",
            soft_wrap=True,
        )
    if REPLICATION in settings_short:
        err.print(
            "Replication is raised by a partition reassignment on the cluster, not here.",
            soft_wrap=True,
        )
    if not fix and any(d.alterable for d in report.differences):
        err.print("run `crm create-topics --fix` to set these configs", soft_wrap=True)
    raise typer.Exit(1)


@cli.command("export-customer")
def export_customer(
    customer_id: Annotated[
        str | None, typer.Option("--customer-id", help="The pseudonymous customer id.")
    ] = None,
    card_file: Annotated[
        Path | None,
        typer.Option(
            "--card-file", help="File holding the card number (kept off the command line)."
        ),
    ] = None,
) -> None:
    """Print as JSON everything the services store of one customer (right of access)."""
    from crm.privacy_tools import export_customer as gather
    from crm.privacy_tools import resolve_customer
    from shared.privacy import InvalidCardNumber

    settings = Settings()
    configure_logging("export-customer", settings.log)
    if (customer_id is None) == (card_file is None):
        raise _fail("give exactly one of --customer-id and --card-file")
    if not settings.store.store_url:
        raise _fail("CRM_STORE_URL is not set")

    async def go() -> dict[str, object]:
        if card_file is None:
            return await gather(settings.store, customer_id or "")
        who = await resolve_customer(
            settings.store,
            card_number=card_file.read_text().strip(),
            card_key=settings.privacy.card_key.get_secret_value().encode(),
        )
        return await gather(settings.store, who)

    try:
        document = asyncio.run(go())
    except InvalidCardNumber:
        raise _fail("the card file does not hold a card number") from None
    typer.echo(json.dumps(document, indent=2, ensure_ascii=False))


@cli.command()
def replay(
    service: Annotated[str, typer.Argument(help="profiles, offers or reports")],
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Skip the check that the service is stopped (for a broker that keeps stopped "
            "consumers listed, such as the embedded one): make sure yourself it is.",
        ),
    ] = False,
) -> None:
    """Rebuild a service's store from the retained topics (the service must be stopped).

    Empties the service's store, moves its consumer group back to the first retained records,
    runs the service until it has read them all, and stops. Safe to run again.
    """
    from crm.registry import BY_NAME
    from crm.replay import ReplayError, replay_main
    from shared.keys import WeakSecret, require_strong_secrets
    from shared.runtime import ConfigurationError, check_configuration

    if service not in ("profiles", "offers", "reports"):
        raise _fail(f"crm replay rebuilds profiles, offers or reports, not {service!r}")
    settings = Settings()
    configure_logging(f"replay-{service}", settings.log)
    try:
        check_configuration(settings)
        require_strong_secrets(BY_NAME[service].secrets, settings)
        report = replay_main(BY_NAME[service], settings, force=force)
    except (ConfigurationError, WeakSecret, ReplayError) as exc:
        raise _fail(str(exc)) from None
    Console().print(
        f"{service} rebuilt from {report.records} retained records on {report.partitions} "
        f"partitions in {report.seconds:.1f}s; start it as usual"
    )


@cli.command("backup")
def backup_command(
    dest: Annotated[Path, typer.Argument(help="A new (or empty) folder for the backup.")],
) -> None:
    """Back up the embedded stores (CRM_STORE_URL=sqlite:///DIR) while the services run.

    One consistent copy of every store file (SQLite's online backup API), the consumer groups'
    offsets, and a manifest.json with the time, the version and each file's checksum.
    """
    from crm.backup import BackupError, backup_main

    settings = Settings()
    configure_logging("backup", settings.log)
    if not settings.kafka.kafka_bootstrap or not settings.store.store_url:
        raise _fail("CRM_KAFKA_BOOTSTRAP and CRM_STORE_URL must be set")
    try:
        report = backup_main(settings, dest)
    except BackupError as exc:
        raise _fail(str(exc)) from None
    typer.echo(
        f"backed up {len(report.manifest.stores)} stores to {report.folder} "
        f"({report.manifest.created_at.isoformat()}) in {report.seconds:.1f}s"
    )


@cli.command("restore")
def restore_command(
    src: Annotated[
        Path | None,
        typer.Argument(help="A folder `crm backup` wrote (not with --point-in-time)."),
    ] = None,
    point_in_time: Annotated[
        str | None,
        typer.Option(
            "--point-in-time",
            help="The stores were restored to this instant by other means (MongoDB's "
            "point-in-time restore, a snapshot): copy nothing, make the replay from it safe. "
            "ISO-8601, UTC when it has no offset.",
        ),
    ] = None,
    margin: Annotated[
        str,
        typer.Option(
            "--margin",
            help="With --point-in-time: replay from this much before it (90s, 10m, 1h); more "
            "than any consumer's lag at that instant plus the producers' clock skew.",
        ),
    ] = "10m",
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Skip the check that every service is stopped (for a broker that keeps stopped "
            "consumers listed, such as the embedded one): make sure yourself they are.",
        ),
    ] = False,
    accept_gap: Annotated[
        bool,
        typer.Option(
            "--accept-gap",
            help="Restore even though the topics no longer retain every record since the "
            "backup (what happened in between is lost).",
        ),
    ] = False,
    accept_unreadable_keys: Annotated[
        bool,
        typer.Option(
            "--accept-unreadable-keys",
            help="Go on when crm.data-keys holds keys wrapped with another CRM_KEY_WRAPPING_KEY "
            "(the escrowed one is lost): those customers' personal fields stay unreadable.",
        ),
    ] = False,
) -> None:
    """Restore the embedded stores from a backup and make the replay safe (services stopped).

    Puts the files back, re-applies the erasures published since the backup, restores the
    e-mail delivery records (no e-mail is sent twice), and moves every consumer group back
    to the backup's offsets. Then start the services as usual: they re-derive the rest.

    With --point-in-time T (any store, MongoDB's own point-in-time restore done first): no
    file is copied; the same steps from the first records stamped at T minus --margin.
    """
    from crm.backup import (
        BackupError,
        parse_margin,
        parse_point_in_time,
        restore_main,
        restore_point_in_time_main,
    )
    from shared.vault_recovery import UnknownWrappingKey

    settings = Settings()
    configure_logging("restore", settings.log)
    if not settings.kafka.kafka_bootstrap or not settings.store.store_url:
        raise _fail("CRM_KAFKA_BOOTSTRAP and CRM_STORE_URL must be set")
    if (src is None) == (point_in_time is None):
        raise _fail("give either a backup folder or --point-in-time TIME")
    try:
        if point_in_time is not None:
            report = restore_point_in_time_main(
                settings,
                parse_point_in_time(point_in_time),
                margin=parse_margin(margin),
                force=force,
                accept_gap=accept_gap,
                accept_unreadable_keys=accept_unreadable_keys,
            )
        else:
            assert src is not None
            report = restore_main(
                settings,
                src,
                force=force,
                accept_gap=accept_gap,
                accept_unreadable_keys=accept_unreadable_keys,
            )
    except (BackupError, UnknownWrappingKey) as exc:
        raise _fail(str(exc)) from None
    what = f"restored {len(report.stores)} stores from the backup of {report.backup_at.isoformat()}"
    if point_in_time is not None:
        what = f"replay from the point in time {report.backup_at.isoformat()} (margin {margin})"
    replay = report.replay
    typer.echo(
        f"{what}: {replay.erasures} erasures re-applied, "
        f"{replay.keys_recovered} data keys recovered, "
        f"{replay.deliveries_restored} deliveries restored, {replay.assumed_sent} assumed "
        f"sent, {replay.partitions_reset} partitions reset in {report.seconds:.1f}s; "
        "start the services as usual"
    )


@cli.command()
def trace(
    card_file: Annotated[
        Path,
        typer.Option(
            "--card-file", help="File holding the card number (kept off the command line)."
        ),
    ],
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """The chain from a customer's swipes to their e-mails: each swipe, its normalized event,
    the profile change, every offer decision (and why one was not made), the offer's fate and
    the e-mail's outcome."""
    from crm.trace import lines
    from crm.trace import trace as follow
    from shared.privacy import InvalidCardNumber

    settings = Settings()
    configure_logging("trace", settings.log)
    if not settings.kafka.kafka_bootstrap or not settings.store.store_url:
        raise _fail("CRM_KAFKA_BOOTSTRAP and CRM_STORE_URL must be set")
    try:
        found = asyncio.run(follow(settings, card_file.read_text().strip()))
    except InvalidCardNumber:
        raise _fail("the card file does not hold a card number") from None
    if as_json:
        typer.echo(json.dumps(found.as_json(), indent=2))
    else:
        for line in lines(found):
            typer.echo(line)


def _moment(text: str | None, option: str) -> dt.datetime | None:
    """An ISO date or date-time option as an aware UTC time (naive means UTC)."""
    if text is None:
        return None
    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError:
        raise _fail(f"{option} must be an ISO date or date-time, not {text!r}") from None
    return moment.replace(tzinfo=moment.tzinfo or dt.UTC).astimezone(dt.UTC)


@cli.command("redrive")
def redrive_command(
    reason: Annotated[
        str | None, typer.Option(help="Dead letters of this reason (processing_failed, ...).")
    ] = None,
    service: Annotated[
        str | None, typer.Option(help="Dead letters written by this service.")
    ] = None,
    source_topic: Annotated[
        str | None, typer.Option(help="Dead letters of records of this topic.")
    ] = None,
    since: Annotated[
        str | None, typer.Option(help="Dead-lettered at or after this time (ISO, UTC if naive).")
    ] = None,
    until: Annotated[
        str | None, typer.Option(help="Dead-lettered before this time (ISO, UTC if naive).")
    ] = None,
    topic: Annotated[
        str | None, typer.Option(help="One record: its topic (with --partition and --offset).")
    ] = None,
    partition: Annotated[int | None, typer.Option(min=0, help="One record: its partition.")] = (
        None
    ),
    offset: Annotated[int | None, typer.Option(min=0, help="One record: its offset.")] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="List what would be redriven; publish nothing.")
    ] = False,
    wait: Annotated[
        float,
        typer.Option(
            min=0,
            help="Seconds to wait at most for the failed services to process the copies, "
            "then count those dead-lettered again (0: do not wait).",
        ),
    ] = 0.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Send dead-lettered records through again once their cause is fixed.

    Selects dead letters of crm.deadletter, reads each original record at its source topic,
    partition and offset (while retained) and publishes it again to that topic, marked with a
    `crm-redrive-of` header; consumers drop what they already processed. Records beyond the
    topic's retention are reported lost. Exits 1 when a record was dead-lettered again.
    """
    from rich.table import Table

    from crm.redrive import Position, Selection, redrive

    position = None
    if topic is not None and partition is not None and offset is not None:
        position = Position(topic, partition, offset)
    elif (topic, partition, offset) != (None, None, None):
        raise _fail("give --topic, --partition and --offset together")
    selection = Selection(
        reason=reason,
        service=service,
        source_topic=source_topic,
        since=_moment(since, "--since"),
        until=_moment(until, "--until"),
        position=position,
    )
    if selection == Selection():
        raise _fail(
            "select dead letters: --reason, --service, --source-topic, --since/--until or "
            "--topic/--partition/--offset"
        )
    settings = Settings()
    configure_logging("redrive", settings.log)
    if not settings.kafka.kafka_bootstrap:
        raise _fail("CRM_KAFKA_BOOTSTRAP is not set")
    report = asyncio.run(redrive(settings.kafka, selection, dry_run=dry_run, wait_s=wait))
    if as_json:
        typer.echo(json.dumps(report.as_json(), indent=2))
    else:
        table = Table(title="dead letters" + (" (dry run: nothing published)" if dry_run else ""))
        for column in ("dead-lettered at", "source", "service", "reason", "event id", "status"):
            table.add_column(column, no_wrap=column in ("source", "event id"))
        table.add_column("note")
        for item in report.items:
            table.add_row(
                item.dead_lettered_at.isoformat(timespec="seconds"),
                str(item.position),
                ", ".join(item.services),
                ", ".join(item.reasons),
                item.event_id or "",
                item.status,
                item.note,
            )
        out = Console()
        out.print(table)
        out.print(
            ", ".join(f"{name.replace('_', ' ')}: {n}" for name, n in report.counts().items())
        )
        if report.unreadable:
            err.print(f"{report.unreadable} records of crm.deadletter are not dead letters")
    if report.incomplete:
        err.print("crm.deadletter stopped answering before its end: the selection may miss some")
    if report.failed_again:
        raise typer.Exit(1)


@cli.command("rotate-card-key")
def rotate_card_key(
    cards_file: Annotated[
        Path, typer.Option("--cards-file", help="Card numbers, one a line (the card registry).")
    ],
) -> None:
    """Re-key card pseudonyms: link every card's id under CRM_NEW_CARD_KEY to its customer.

    Run with CRM_CARD_KEY (the current key) and CRM_NEW_CARD_KEY set, then restart ingest
    with CRM_CARD_KEY set to the new key. Profiles, offers and e-mails keep their customer ids.
    """
    import os

    from crm.privacy_tools import rotate_card_keys

    settings = Settings()
    configure_logging("rotate-card-key", settings.log)
    new_key = os.environ.get("CRM_NEW_CARD_KEY", "")
    if not new_key:
        raise _fail("CRM_NEW_CARD_KEY is not set: the key ingest will use from now on")
    if not settings.store.store_url:
        raise _fail("CRM_STORE_URL is not set")
    old_key = settings.privacy.card_key.get_secret_value()
    if new_key == old_key:
        raise _fail("CRM_NEW_CARD_KEY is the current CRM_CARD_KEY")
    with cards_file.open() as lines:
        report = asyncio.run(
            rotate_card_keys(
                settings.store, lines, old_key=old_key.encode(), new_key=new_key.encode()
            )
        )
    Console().print(
        f"{report.linked} cards re-keyed, {report.invalid} invalid lines skipped; "
        "now restart ingest with CRM_CARD_KEY set to the new key"
    )


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
