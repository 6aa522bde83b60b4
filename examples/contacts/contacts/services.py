"""The outside world of the example, made real but local.

- object storage: a directory (``CONTACTS_STORAGE_DIR``, default ``storage/`` next to this package);
- the address-enrichment service: adds zip codes; with ``CONTACTS_ENRICH_FAILURES=N`` it is down for
  the step's first N attempts (counted by kubestep, so it works wherever each attempt runs, in a pod of
  its own or not);
- the CRM: a SQLite database (``CONTACTS_DATA_DIR/crm.sqlite3``);
- email: one file per message in an outbox directory (``CONTACTS_DATA_DIR/outbox/``).

``CONTACTS_DATA_DIR`` defaults to ``.demo`` in the working directory.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import sqlite3
from pathlib import Path
from typing import Any

import kubestep

REQUIRED_COLUMNS = ("name", "email", "street", "city")


class EnrichmentUnavailableError(Exception):
    """The address service did not answer; worth retrying."""


def storage_dir() -> Path:
    """Where uploaded files are read from."""
    default = Path(__file__).resolve().parent.parent / "storage"
    return Path(os.environ.get("CONTACTS_STORAGE_DIR", default))


def data_dir() -> Path:
    """Where the CRM database and the outbox live."""
    path = Path(os.environ.get("CONTACTS_DATA_DIR", ".demo"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def validate_upload(filename: str) -> dict[str, Any]:
    """Read the CSV from object storage; check its columns and every row."""
    path = storage_dir() / filename
    if not path.is_file():
        raise kubestep.NonRetriableError(
            f"upload {filename!r} does not exist in object storage ({storage_dir()})"
        )
    print(f"reading {filename} ({path.stat().st_size} bytes)")
    reader = csv.DictReader(io.StringIO(path.read_text()))
    columns = reader.fieldnames or []
    errors = [f"missing column {c!r}" for c in REQUIRED_COLUMNS if c not in columns]
    rows = []
    for number, row in enumerate(reader, start=2):
        if not (row.get("name") or "").strip():
            errors.append(f"line {number}: empty name")
        if "@" not in (row.get("email") or ""):
            errors.append(f"line {number}: invalid email {row.get('email')!r}")
        rows.append({c: (row.get(c) or "").strip() for c in REQUIRED_COLUMNS})
    print(f"{len(rows)} rows, {len(errors)} problems")
    return {"valid": not errors, "errors": errors, "rows": rows if not errors else []}


def enrich_addresses(rows: list[dict[str, str]], attempt: int = 1) -> list[dict[str, str]]:
    """Call the (flaky) third-party service that adds zip codes, on the step's ``attempt``."""
    failures = int(os.environ.get("CONTACTS_ENRICH_FAILURES", "0"))
    if attempt <= failures:
        print(f"address service call (attempt {attempt}): 503 Service Unavailable")
        raise EnrichmentUnavailableError(f"address service unavailable (HTTP 503) on attempt {attempt}")
    print(f"address service call (attempt {attempt}): enriched {len(rows)} addresses")
    return [{**row, "zip": _zip_code(row)} for row in rows]


def _zip_code(row: dict[str, str]) -> str:
    digest = hashlib.sha256(f"{row['street']}|{row['city']}".encode()).hexdigest()
    return str(int(digest[:8], 16) % 90000 + 10000)


def crm() -> sqlite3.Connection:
    """The CRM database."""
    db = sqlite3.connect(data_dir() / "crm.sqlite3")
    db.execute(
        "CREATE TABLE IF NOT EXISTS contacts"
        " (owner TEXT, name TEXT, email TEXT, street TEXT, city TEXT, zip TEXT)"
    )
    return db


def create_contacts(owner: str, rows: list[dict[str, str]]) -> dict[str, int]:
    """Insert the contacts in one transaction."""
    with crm() as db:
        db.executemany(
            "INSERT INTO contacts VALUES (?, ?, ?, ?, ?, ?)",
            [(owner, r["name"], r["email"], r["street"], r["city"], r["zip"]) for r in rows],
        )
    print(f"inserted {len(rows)} contacts for user {owner}")
    return {"total_users_added": len(rows)}


def send_email(to: str, subject: str, body: str) -> dict[str, str]:
    """Write the message to the outbox."""
    outbox = data_dir() / "outbox"
    outbox.mkdir(exist_ok=True)
    message = {"to": to, "subject": subject, "body": body}
    name = hashlib.sha256(json.dumps(message, sort_keys=True).encode()).hexdigest()[:12] + ".json"
    (outbox / name).write_text(json.dumps(message, indent=2))
    print(f"email to {to}: {subject}")
    return {"message": name}


def notify_invalid(owner: str, filename: str, errors: list[str]) -> dict[str, str]:
    """Tell the user why the upload was rejected."""
    return send_email(owner, f"We could not import {filename}", "Problems found:\n" + "\n".join(errors))


def notify_success(owner: str, filename: str, added: int) -> dict[str, str]:
    """Tell the user the import is done."""
    return send_email(owner, f"{added} contacts imported from {filename}", "Your contacts are in the CRM.")
