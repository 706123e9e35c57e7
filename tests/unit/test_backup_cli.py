"""`crm backup` and `crm restore` refuse what they cannot do safely, before touching anything."""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
from pathlib import Path

from typer.testing import CliRunner

from crm.backup import MANIFEST, Manifest, StoreFile, file_sha256, schema_fingerprint
from crm.cli import cli

# Nothing listens there: each refusal below comes before any Kafka call.
BROKER = "127.0.0.1:9"


def invoke(*args: str, store_url: str) -> tuple[int, str]:
    env = {"CRM_KAFKA_BOOTSTRAP": BROKER, "CRM_STORE_URL": store_url, "CRM_LOG_LEVEL": "ERROR"}
    result = CliRunner().invoke(cli, list(args), env=env)
    return result.exit_code, result.output


def backup_folder(tmp_path: Path) -> Path:
    """A backup `crm backup` could have written: one store file and its manifest."""
    folder = tmp_path / "backup"
    folder.mkdir()
    db = sqlite3.connect(folder / "profiles.sqlite3")
    db.execute("CREATE TABLE profiles (id TEXT)")
    db.commit()
    fingerprint = schema_fingerprint(db)
    db.close()
    path = folder / "profiles.sqlite3"
    manifest = Manifest(
        format=1,
        app_version="0.1.0",
        created_at=dt.datetime(2026, 3, 1, 12, tzinfo=dt.UTC),
        stores=[
            StoreFile(
                name="profiles",
                sha256=file_sha256(path),
                size=path.stat().st_size,
                schema_fingerprint=fingerprint,
            )
        ],
        groups={},
        topic_ends=[],
    )
    (folder / MANIFEST).write_text(manifest.model_dump_json())
    return folder


def test_backup_refuses_a_mongodb_store_and_names_its_supported_way(tmp_path: Path) -> None:
    code, output = invoke("backup", str(tmp_path / "b"), store_url="mongodb://db:27017")
    assert code == 2
    assert "point-in-time" in output
    assert not (tmp_path / "b").exists()


def test_backup_refuses_a_folder_that_is_not_empty(tmp_path: Path) -> None:
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "old.txt").write_text("x")
    code, output = invoke("backup", str(tmp_path / "b"), store_url=f"sqlite:///{tmp_path / 's'}")
    assert code == 2
    assert "not empty" in output


def test_restore_refuses_a_damaged_backup_and_leaves_the_stores_alone(tmp_path: Path) -> None:
    folder = backup_folder(tmp_path)
    with (folder / "profiles.sqlite3").open("ab") as handle:
        handle.write(b"\0")
    store = tmp_path / "store"
    store.mkdir()
    (store / "profiles.sqlite3").write_bytes(b"current")
    code, output = invoke("restore", str(folder), "--force", store_url=f"sqlite:///{store}")
    assert code == 2
    assert "does not match its checksum" in output
    assert (store / "profiles.sqlite3").read_bytes() == b"current"


def test_restore_refuses_a_folder_without_a_manifest(tmp_path: Path) -> None:
    folder = backup_folder(tmp_path)
    (folder / MANIFEST).unlink()
    code, output = invoke("restore", str(folder), store_url=f"sqlite:///{tmp_path / 's'}")
    assert code == 2
    assert "manifest.json" in output


def test_restore_refuses_a_manifest_of_another_format(tmp_path: Path) -> None:
    folder = backup_folder(tmp_path)
    document = json.loads((folder / MANIFEST).read_text())
    (folder / MANIFEST).write_text(json.dumps({**document, "format": 99}))
    code, output = invoke("restore", str(folder), store_url=f"sqlite:///{tmp_path / 's'}")
    assert code == 2
    assert "format 99" in output
