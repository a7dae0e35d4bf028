"""A small Python client for the Gatewayz admin API.

    from gateway_core.client import GatewayzAdmin

    with GatewayzAdmin("http://127.0.0.1:8000", "gw_admin_...") as admin:
        key = admin.create_api_key(
            name="research", team=3, rate_limit=1000, credit_limit="100"
        )
        print(key["key"])  # shown only in this response

Money is sent as decimal strings and returned as `Decimal`. Every failed
call raises `GatewayzAPIError` with the HTTP status and the server's message.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from decimal import Decimal, InvalidOperation
from types import TracebackType
from typing import Any

import httpx

DEFAULT_TIMEOUT = 30.0
RATE_LIMIT_FIELDS = (
    "requests_per_minute",
    "tokens_per_minute",
    "requests_per_day",
    "max_concurrent",
)


class GatewayzAPIError(Exception):
    """A failed admin API call: an error response, or no response at all (status 0)."""

    def __init__(
        self,
        status_code: int,
        message: str,
        *,
        error_type: str | None = None,
        code: str | None = None,
        param: str | None = None,
    ) -> None:
        super().__init__(f"{status_code}: {message}" if status_code else message)
        self.status_code = status_code
        self.message = message
        self.error_type = error_type
        self.code = code
        self.param = param


def usd(amount: Decimal | str | int) -> str:
    """Write a dollar amount as a decimal string; floats are rejected because they round."""
    if isinstance(amount, (float, bool)):
        raise TypeError("pass money as Decimal, str or int, not float")
    try:
        value = Decimal(amount)
    except InvalidOperation:
        raise ValueError(f"not a decimal amount: {amount!r}") from None
    return format(value, "f")


def rate_limit_values(rate_limit: int | Mapping[str, int] | None) -> dict[str, int] | None:
    """Turn `rate_limit` into the API's rate limits: an int is requests per UTC day."""
    if rate_limit is None:
        return None
    if isinstance(rate_limit, int) and not isinstance(rate_limit, bool):
        return {"requests_per_day": rate_limit}
    if isinstance(rate_limit, Mapping):
        unknown = set(rate_limit) - set(RATE_LIMIT_FIELDS)
        if unknown:
            raise ValueError(
                f"unknown rate limits {sorted(unknown)}; use {', '.join(RATE_LIMIT_FIELDS)}"
            )
        return dict(rate_limit)
    raise TypeError("rate_limit must be requests per day (int) or a dict of limits")


class GatewayzAdmin:
    """Client for the admin API of the proxy at `base_url`, such as http://127.0.0.1:8000."""

    def __init__(
        self,
        base_url: str,
        admin_key: str,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._http = httpx.Client(
            base_url=base_url.rstrip("/") + "/admin",
            headers={"authorization": f"Bearer {admin_key}"},
            timeout=timeout,
            transport=transport,
        )

    def __enter__(self) -> GatewayzAdmin:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Mapping[str, Any] | None = None,
    ) -> Any:
        """Send one call and return its decoded JSON body (None for 204)."""
        try:
            response = self._http.request(method, path, json=json, params=params)
        except httpx.HTTPError as exc:
            raise GatewayzAPIError(0, f"{method} {path} failed: {exc}") from exc
        if response.status_code >= 400:
            raise error_from(response)
        if response.status_code == 204:
            return None
        return response.json()

    # API keys

    def create_api_key(
        self,
        *,
        name: str,
        team: int,
        project: int | None = None,
        rate_limit: int | Mapping[str, int] | None = None,
        credit_limit: Decimal | str | int | None = None,
        allowed_models: Sequence[str] | None = None,
        expires_at: datetime | None = None,
        mode: str = "live",
        **restrictions: Any,
    ) -> dict[str, Any]:
        """Create an API key for a team id, optionally in a project id, in one call.

        `rate_limit` is requests per UTC day, or a dict with any of
        requests_per_minute, tokens_per_minute, requests_per_day and
        max_concurrent. `credit_limit` is a lifetime limit in USD.
        `restrictions` are further key restrictions, such as allowed_ips or
        tags. The returned dict's "key" is the plain key, shown only here.
        """
        body: dict[str, Any] = {"name": name, "team_id": team, "mode": mode, **restrictions}
        if project is not None:
            body["project_id"] = project
        limits = rate_limit_values(rate_limit)
        if limits is not None:
            body["rate_limits"] = limits
        if credit_limit is not None:
            body["credit_limit_usd"] = usd(credit_limit)
        if allowed_models is not None:
            body["allowed_models"] = list(allowed_models)
        if expires_at is not None:
            body["expires_at"] = expires_at.isoformat()
        return self.request("POST", "/keys", json=body)

    def get_api_key(self, key_id: int) -> dict[str, Any]:
        return self.request("GET", f"/keys/{key_id}")

    def list_api_keys(self, *, team: int | None = None) -> list[dict[str, Any]]:
        params = {} if team is None else {"team_id": team}
        return self.request("GET", "/keys", params=params)["data"]

    def revoke_api_key(self, key_id: int) -> dict[str, Any]:
        return self.request("POST", f"/keys/{key_id}/revoke")

    def rotate_api_key(self, key_id: int, grace_seconds: int = 86_400) -> dict[str, Any]:
        """Issue a replacement key; the old one keeps working for `grace_seconds`."""
        return self.request("POST", f"/keys/{key_id}/rotate", json={"grace_seconds": grace_seconds})

    # Budgets and usage

    def set_budget(
        self,
        *,
        scope: str,
        scope_id: int,
        period: str,
        limit: Decimal | str | int,
        alert_thresholds: Sequence[Decimal | str] | None = None,
    ) -> dict[str, Any]:
        """Create or change a budget; scope is organization, team, project or key."""
        body: dict[str, Any] = {
            "scope_type": scope,
            "scope_id": scope_id,
            "period": period,
            "limit_usd": usd(limit),
        }
        if alert_thresholds is not None:
            body["alert_thresholds"] = [str(Decimal(value)) for value in alert_thresholds]
        return self.request("POST", "/budgets", json=body)

    def get_usage(
        self,
        group_by: str = "model",
        *,
        key: int | None = None,
        team: int | None = None,
        project: int | None = None,
        start: datetime | None = None,
        end: datetime | None = None,
    ) -> list[dict[str, Any]]:
        """Return usage groups with requests, tokens and `cost_usd` as Decimal.

        `start` is inclusive and `end` exclusive; both need a time zone.
        """
        filters = {"key": key, "team": team, "project": project}
        params: dict[str, Any] = {"group_by": group_by}
        params.update({name: value for name, value in filters.items() if value is not None})
        for name, moment in (("start", start), ("end", end)):
            if moment is not None:
                params[name] = moment.isoformat()
        groups = self.request("GET", "/usage", params=params)["data"]
        return [{**group, "cost_usd": Decimal(group["cost_usd"])} for group in groups]


def error_from(response: httpx.Response) -> GatewayzAPIError:
    """Build the error of a failed call from its OpenAI-style body, or its raw text."""
    try:
        error = response.json()["error"]
        message = str(error["message"])
    except (ValueError, KeyError, TypeError):
        return GatewayzAPIError(response.status_code, response.text[:500] or response.reason_phrase)
    return GatewayzAPIError(
        response.status_code,
        message,
        error_type=error.get("type"),
        code=error.get("code"),
        param=error.get("param"),
    )
