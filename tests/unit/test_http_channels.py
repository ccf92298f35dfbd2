"""Push channels: the channel-file section, fences, coalescing, request shapes, throttle headers, breaker."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx2
import pytest
from pydantic import ValidationError

from connectors.http_channels import (
    Breaker,
    Delivery,
    ExceptionWriter,
    Item,
    auth_headers,
    fence_of,
    idempotency_key,
    item_of,
    newer,
    request_of,
    retry_after_s,
)
from erpsync.channels import load_channels
from erpsync.settings import Settings
from state.channels import Channel, PushAuth


def channel(**push: Any) -> Channel:
    return Channel.model_validate({"id": "shop", "outputs": {"push": {"url": "http://127.0.0.1:1/webhook", **push}}})


def availability(sku: str, ats: int, wms: str, version: int, erp: str = "") -> dict[str, Any]:
    return {"channel": "shop", "sku": sku, "ats": ats, "status": "active", "positions": {"erp": erp, "wms": wms},
            "version": version, "event_time_ms": 1_000 + version}


def test_push_section_parses_with_defaults_and_reference_channels_still_load() -> None:
    push = channel(sends=["availability", "order_status"], batch_size=25, rate_per_s=50, burst=10,
                   auth={"type": "bearer", "token_env": "SHOP_TOKEN"}).outputs.push
    assert push is not None
    assert (push.batch_size, push.rate_per_s, push.burst, push.format) == (25, 50, 10, "webhook")
    assert push.sends == ("availability", "order_status")
    assert all(c.outputs.push is None for c in load_channels())  # the reference channels push nowhere


@pytest.mark.parametrize(("push", "message"), [
    ({"urls": "x"}, "Extra inputs are not permitted"),
    ({"url": "ftp://x"}, "should match pattern"),
    ({"auth": {"type": "bearer"}}, "needs token_env"),
    ({"auth": {"type": "basic", "user_env": "U"}}, "needs password_env"),
    ({"auth": {"type": "bearer", "token": "s3cr3t"}}, "Extra inputs are not permitted"),  # secrets never in the file
    ({"format": "bigcommerce", "sends": ["order_status"]}, "availability only"),
    ({"sends": []}, "sends must name"),
    ({"rate_per_s": 0}, "greater than 0"),
])
def test_push_section_rejects_bad_definitions(push: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        Channel.model_validate({"id": "shop", "outputs": {"push": {"url": "http://h/", **push}}})


@pytest.mark.parametrize(("value", "old", "expected"), [
    ({"version": 1}, None, True),
    ({"version": 6, "positions": {"wms": "0001"}}, ("", "", 5), True),  # the version grew
    ({"version": 5, "positions": {"wms": "0009"}}, ("", "", 5), False),  # the same version: the same value
    ({"version": 4, "positions": {"wms": "0009"}}, ("", "", 5), False),  # an older value (a redelivery)
])
def test_fence_is_the_stores_fence(value: dict[str, Any], old: tuple[str, str, int] | None, expected: bool) -> None:
    """Like Redis and the ops database: the version only grows, whatever the positions say."""
    assert newer(fence_of("availability", value), old) is expected


def delivery(**push: Any) -> Delivery:
    s = Settings()
    return Delivery(s, channel(**push), ExceptionWriter(s, None), environ={})


def test_backlog_coalesces_to_the_newest_value_per_key() -> None:
    d = delivery()
    taken = d.offer(item_of("availability", availability(f"S{n % 10}", n, f"{n:06d}", n)) for n in range(5000))
    assert taken == 5000  # every one was newer than what was pending for its key
    assert len(d.pending) == 10
    assert {ref[1]: item.body["ats"] for ref, item in d.pending.items()} == {f"S{k}": 4990 + k for k in range(10)}
    # an older value (a redelivery after a crash, a late record) never replaces a newer one
    assert d.offer([item_of("availability", availability("S3", -1, "000100", 100))]) == 0
    assert d.pending[("availability", "S3")].body["ats"] == 4993


def test_values_not_newer_than_acknowledged_or_in_flight_are_not_owed() -> None:
    d = delivery()
    d.acked[("availability", "A")] = ("", "000010", 10)
    assert d.offer([item_of("availability", availability("A", 1, "000010", 10))]) == 0  # already acknowledged
    assert d.offer([item_of("availability", availability("A", 2, "000011", 11))]) == 1
    ref = ("availability", "A")
    d.inflight[ref] = d.pending.pop(ref)  # a request carries it now
    assert d.offer([item_of("availability", availability("A", 3, "000011", 11))]) == 0  # what is in flight
    assert d.offer([item_of("availability", availability("A", 4, "000012", 12))]) == 1  # waits for the request
    assert d.pending[ref].body["ats"] == 4 and d.inflight[ref].body["ats"] == 2
    # the next attempt sends the newest value, never the one a newer value superseded
    assert [i.body["ats"] for i in d._newest([ref])] == [4]
    d.rejected[("availability", "B")] = ("", "000005", 5)
    assert d.offer([item_of("availability", availability("B", 1, "000005", 5))]) == 0  # rejected as it is
    assert d.offer([item_of("availability", availability("B", 2, "000006", 6))]) == 1


def test_idempotency_key_is_a_function_of_keys_and_fences() -> None:
    a = item_of("availability", availability("A", 5, "0001", 1))
    b = item_of("availability", availability("B", 6, "0002", 2))
    b_later = item_of("availability", availability("B", 6, "0003", 3))
    assert idempotency_key("shop", [a, b]) == idempotency_key("shop", [b, a])
    assert idempotency_key("shop", [a, b]) != idempotency_key("shop", [a, b_later])
    assert idempotency_key("shop", [a, b]) != idempotency_key("other", [a, b])


def order_status(ext: str, version: int) -> dict[str, Any]:
    return {"channel": "shop", "external_order_id": ext, "order_id": 7, "status": "shipped", "reasons": [],
            "lines": [{"line_no": 1, "sku": "A", "ordered": 2, "allocated": 2, "shipped": 2}],
            "carriers": ["UPS"], "tracking_numbers": ["1Z999"], "last_fact_ms": 5, "version": version}


def test_request_shapes() -> None:
    push = channel(sends=["availability", "order_status"]).outputs.push
    assert push is not None
    items = [item_of("availability", availability("A", 5, "0001", 1)), item_of("order_status", order_status("O-1", 3))]
    method, body = request_of("shop", push, items, "k1")
    assert method == "POST"
    assert body["idempotency_key"] == "k1" and body["channel"] == "shop"
    assert body["availability"] == [{"sku": "A", "ats": 5, "status": "active", "positions": {"erp": "", "wms": "0001"},
                                     "version": 1, "event_time_ms": 1001}]
    assert body["order_status"][0]["carriers"] == ["UPS"] and body["order_status"][0]["tracking_numbers"] == ["1Z999"]
    big = channel(format="bigcommerce", location_id=3).outputs.push
    assert big is not None
    method, body = request_of("shop", big, items[:1], "k1")
    assert (method, body) == ("PUT", {"reason": "erpsync available-to-sell",
                                      "items": [{"location_id": 3, "sku": "A", "quantity": 5}]})


def test_retry_after_and_throttle_headers() -> None:
    assert retry_after_s(httpx2.Headers({"Retry-After": "3"})) == 3.0
    assert retry_after_s(httpx2.Headers({"Retry-After": "1.5"})) == 1.5
    assert retry_after_s(httpx2.Headers({"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}),
                         now=1445412470.0) == pytest.approx(10.0)
    assert retry_after_s(httpx2.Headers({"X-Rate-Limit-Time-Reset-Ms": "250"})) == 0.25
    assert retry_after_s(httpx2.Headers({"Retry-After": "1", "X-Rate-Limit-Time-Reset-Ms": "40"})) == 0.04
    assert retry_after_s(httpx2.Headers({})) is None


def test_credentials_come_from_named_variables_and_errors_name_only_the_variable() -> None:
    env = {"TOK": "s3cr3t", "U": "user", "P": "pw"}
    assert auth_headers("shop", PushAuth(type="bearer", token_env="TOK"), env) == {"Authorization": "Bearer s3cr3t"}
    assert auth_headers("shop", PushAuth(type="header", token_env="TOK"), env) == {"X-Auth-Token": "s3cr3t"}
    assert auth_headers("shop", PushAuth(type="basic", user_env="U", password_env="P"), env) == {
        "Authorization": "Basic dXNlcjpwdw=="}
    with pytest.raises(ValueError, match="environment variable MISSING is not set") as err:
        auth_headers("shop", PushAuth(type="bearer", token_env="MISSING"), env)
    assert "\n" not in str(err.value)


def test_breaker_opens_probes_once_and_closes() -> None:
    moves: list[tuple[str, str]] = []

    async def scenario() -> None:
        b = Breaker(3, 0.2, lambda before, after, why: moves.append((before, after)))
        for _ in range(2):
            b.failure("HTTP 500")
        assert b.state == "closed"
        b.failure("HTTP 500")
        assert b.state == "open"
        t0 = time.monotonic()
        waiters = [asyncio.create_task(b.admit()) for _ in range(3)]
        done, _ = await asyncio.wait(waiters, timeout=1, return_when=asyncio.FIRST_COMPLETED)
        assert len(done) == 1 and time.monotonic() - t0 >= 0.19  # one probe, after the reset time
        assert b.state == "half_open"
        b.failure("timeout")  # the probe failed: open again
        assert b.state == "open"
        await asyncio.sleep(0.25)
        done, _ = await asyncio.wait(waiters, timeout=1, return_when=asyncio.FIRST_COMPLETED)
        assert b.state == "half_open"
        b.success()
        await asyncio.wait_for(asyncio.gather(*waiters), 1)  # closed: everyone goes
        assert b.state == "closed"

    asyncio.run(scenario())
    assert moves == [("closed", "open"), ("open", "half_open"), ("half_open", "open"), ("open", "half_open"),
                     ("half_open", "closed")]


def test_item_of_order_status_carries_tracking() -> None:
    item = item_of("order_status", order_status("O-1", 4))
    assert isinstance(item, Item)
    assert item.ref == ("order_status", "O-1") and item.fence == ("", "", 4)
    assert item.body["tracking_numbers"] == ["1Z999"]
