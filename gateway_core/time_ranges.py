"""Calendar ranges in an organization's time zone, turned into UTC instants.

Analytics queries filter `timestamptz` columns with half-open ranges
[start, end) of aware UTC datetimes. The functions here build those ranges
from local calendar dates and named periods such as "this month".
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from gateway_core.errors import InvalidRequestError

# Units that analytics queries truncate timestamps to, finest first.
BUCKET_UNITS = ("hour", "day", "week", "month")
PERIODS = {
    "today": "Today",
    "last_7_days": "Last 7 days",
    "last_30_days": "Last 30 days",
    "this_month": "This month",
}


@dataclass(frozen=True)
class TimeRange:
    """A half-open range [start, end) of aware UTC datetimes."""

    start: datetime
    end: datetime

    @property
    def length(self) -> timedelta:
        return self.end - self.start


def zone_info(timezone: str) -> ZoneInfo:
    try:
        return ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError) as error:
        raise InvalidRequestError(
            f"unknown time zone {timezone!r}: use an IANA name such as Europe/Berlin"
        ) from error


def local_midnight(day: date, timezone: str) -> datetime:
    """Return the UTC instant at which `day` starts in `timezone`."""
    return datetime.combine(day, time.min, tzinfo=zone_info(timezone)).astimezone(UTC)


def day_range(first: date, end: date, timezone: str) -> TimeRange:
    """Return the local days [first, end) as UTC instants. `end` is exclusive."""
    if end <= first:
        raise InvalidRequestError(
            f"end date {end.isoformat()} must be after start date {first.isoformat()}"
        )
    return TimeRange(local_midnight(first, timezone), local_midnight(end, timezone))


def days_start_on_utc_hours(first: date, end: date, timezone: str) -> bool:
    """Return whether every local midnight from `first` to `end` falls on a whole UTC hour.

    When it does, hourly rollups bucketed in the zone give exact local days.
    Zones with offsets such as +05:30 do not, so their local days split
    hourly buckets.
    """
    day = first
    while day <= end:
        midnight = local_midnight(day, timezone)
        if midnight.minute or midnight.second:
            return False
        day += timedelta(days=1)
    return True


def next_whole_hour(at: datetime) -> datetime:
    """Return the start of the UTC hour after the one that contains `at`."""
    hour = at.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    return hour + timedelta(hours=1)


def period_range(period: str, now: datetime, timezone: str) -> tuple[TimeRange, TimeRange]:
    """Return a named period up to the current hour, and the period before it.

    Both ranges end on whole UTC hours, because the rollups they are read
    from are hourly, so the current hour counts in full. The previous range
    has the same length, except for "this_month", where it starts on the
    first of the previous month and is cut at the end of that month.
    """
    if period not in PERIODS:
        raise InvalidRequestError(f"period must be one of {', '.join(PERIODS)}; got {period!r}")
    end = next_whole_hour(now)
    local_today = now.astimezone(zone_info(timezone)).date()
    if period in ("last_7_days", "last_30_days"):
        length = timedelta(days=7 if period == "last_7_days" else 30)
        return TimeRange(end - length, end), TimeRange(end - 2 * length, end - length)
    if period == "today":
        start = local_midnight(local_today, timezone)
        previous_start = local_midnight(local_today - timedelta(days=1), timezone)
        return TimeRange(start, end), TimeRange(previous_start, previous_start + (end - start))
    month_start = local_today.replace(day=1)
    previous_month = (month_start - timedelta(days=1)).replace(day=1)
    start = local_midnight(month_start, timezone)
    previous_start = local_midnight(previous_month, timezone)
    previous_end = min(previous_start + (end - start), start)
    return TimeRange(start, end), TimeRange(previous_start, previous_end)


def default_bucket_unit(length: timedelta) -> str:
    """Return the time bucket that gives a readable number of bars for a range."""
    if length <= timedelta(days=3):
        return "hour"
    if length <= timedelta(days=62):
        return "day"
    if length <= timedelta(days=366):
        return "week"
    return "month"
