"""A local spool for usage rows while Postgres is unreachable.

Rows are appended as JSON lines and fsynced per batch, so a crash after
`append` returns loses nothing. Files are replayed, oldest first, when the
database accepts connections again. Replay goes through the recorder's normal write,
which skips a row whose request id is already in usage_request_ids, so a row
replayed twice counts once.
"""

from __future__ import annotations

import itertools
import logging
import os
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
from psycopg.types.json import Jsonb

from proxy.spend import Limit

logger = logging.getLogger("gatewayz.spool")

_DECIMAL_FIELDS = ("cost_usd",)
_DATETIME_FIELDS = ("created_at",)


def _encode(row: dict[str, Any]) -> bytes:
    data = dict(row)
    if isinstance(data.get("key_metadata"), Jsonb):
        data["key_metadata"] = data["key_metadata"].obj
    data["_limits"] = [
        {
            "key": limit.key,
            "kind": limit.kind,
            "label": limit.label,
            "budget_id": limit.budget_id,
            "period_start": limit.period_start.isoformat() if limit.period_start else None,
            "scope_type": limit.scope_type,
            "scope_id": limit.scope_id,
        }
        for limit in row.get("_limits", ())
    ]
    return orjson.dumps(data, default=str) + b"\n"


def _decode(line: bytes) -> dict[str, Any]:
    row = orjson.loads(line)
    for field in _DECIMAL_FIELDS:
        row[field] = Decimal(row[field])
    for field in _DATETIME_FIELDS:
        row[field] = datetime.fromisoformat(row[field])
    limits = []
    for item in row.get("_limits", ()):
        start = item["period_start"]
        item["period_start"] = datetime.fromisoformat(start) if start else None
        limits.append(Limit(**item))
    row["_limits"] = tuple(limits)
    row["key_metadata"] = Jsonb(row.get("key_metadata") or {})
    if row.get("_body") is None:
        row.pop("_body", None)
    return row


class Spool:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._sequence = itertools.count()

    def append(self, rows: list[dict[str, Any]]) -> Path:
        """Write rows to a new spool file and fsync it before returning."""
        self.directory.mkdir(parents=True, exist_ok=True)
        name = f"usage-{os.getpid()}-{datetime.now().strftime('%Y%m%d%H%M%S%f')}"
        path = self.directory / f"{name}-{next(self._sequence)}.jsonl"
        with path.open("wb") as handle:
            for row in rows:
                handle.write(_encode(row))
            handle.flush()
            os.fsync(handle.fileno())
        return path

    def pending_files(self) -> list[Path]:
        if not self.directory.exists():
            return []
        return sorted(self.directory.glob("usage-*.jsonl"))

    def size(self) -> int:
        """Return the number of spooled rows not yet replayed."""
        total = 0
        for path in self.pending_files():
            try:
                with path.open("rb") as handle:
                    total += sum(1 for _ in handle)
            except FileNotFoundError:
                continue
        return total

    def claim(self, path: Path) -> Path | None:
        """Rename a spool file so only this process replays it; None if another did."""
        claimed = path.with_name(f"replaying-{os.getpid()}-{path.name}")
        try:
            path.rename(claimed)
        except FileNotFoundError:
            return None
        return claimed

    def read(self, path: Path) -> list[dict[str, Any]]:
        with path.open("rb") as handle:
            return [_decode(line) for line in handle if line.strip()]

    def release(self, claimed: Path) -> None:
        """Hand a claimed file back (its replay failed) under its original name."""
        original = claimed.name.split("-", 2)[2]
        claimed.rename(claimed.with_name(original))

    def reclaim_abandoned(self) -> None:
        """Rename files claimed by processes that no longer run, so they are replayed."""
        if not self.directory.exists():
            return
        for path in self.directory.glob("replaying-*.jsonl"):
            pid = int(path.name.split("-", 2)[1])
            if pid != os.getpid() and not _process_alive(pid):
                self.release(path)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
