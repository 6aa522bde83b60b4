"""The workflow: named steps; a failed step is retried alone, finished steps never run again."""

from __future__ import annotations

from typing import Any

import kubestep
from contacts import services


@kubestep.workflow("process-contacts-csv-upload", trigger="api/contact_list.uploaded")
def process_contacts_csv_upload(ctx: kubestep.Context, step: kubestep.Step) -> dict[str, Any]:
    """Import the contacts of an uploaded CSV into the CRM and tell the user how it went."""
    filename = ctx.event.data["filename"]
    owner = str(ctx.event.user.get("id", "unknown"))

    check = step.run("validate-upload-contents", services.validate_upload, filename)
    if not check["valid"]:
        step.run("notify-user-of-invalid-contents", services.notify_invalid, owner, filename, check["errors"])
        return {"imported": 0, "errors": check["errors"]}

    # ctx.attempt is this step's attempt number: the simulated service is down for the first
    # CONTACTS_ENRICH_FAILURES of them.
    rows = step.run("enrich-address-information", services.enrich_addresses, check["rows"], ctx.attempt)
    created = step.run("create-contacts-in-crm", services.create_contacts, owner, rows)
    step.run(
        "notify-user-of-successful-import",
        services.notify_success,
        owner,
        filename,
        created["total_users_added"],
    )
    # Other workflows (billing, analytics) react to the import without this one knowing them.
    step.send_event(
        "announce-import-completed",
        "api/contact_list.imported",
        {"filename": filename, "total_users_added": created["total_users_added"]},
        user={"id": owner},
    )
    return {"imported": created["total_users_added"]}
