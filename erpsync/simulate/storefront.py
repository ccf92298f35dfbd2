"""The channels' storefronts: send the planned orders to ``commerce.orders``, at a chosen rate.

Each plan's JSON goes out keyed ``<channel>:<external_order_id>`` through an idempotent producer,
a duplicate a second time where its plan says; while an order waits for its slot the caller's
``on_idle`` runs (the ERP and WMS rounds). Delivered messages are counted in the manifest.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from typing import Any

from erpsync.settings import Settings
from erpsync.simulate.manifest import Manifest
from erpsync.simulate.scenario import OrderPlan

ORDERS_TOPIC = "commerce.orders"


class Storefront:
    """Produces a run's channel orders; the Kafka producer is created on first use, flushed by ``close``."""

    def __init__(self, settings: Settings, tag: str, manifest: Manifest) -> None:
        self.settings = settings
        self.tag = tag
        self.manifest = manifest
        self._producer: Any = None
        self._delivery_errors: list[str] = []

    def close(self) -> None:
        if self._producer is not None:
            self._producer.flush(10)
        self._producer = None

    def send(self, submissions: Sequence[OrderPlan], rate: float | None,
             on_idle: Callable[[], None] | None, idle_every_s: float) -> None:
        """Produce the submissions in order, at most `rate` a second (None: as fast as possible).

        While an order waits for its slot, on_idle is called every idle_every_s. Raises RuntimeError
        when any message is not delivered.
        """
        if self._producer is None:
            from confluent_kafka import Producer  # noqa: PLC0415

            self._producer = Producer(self.settings.kafka.client_config() | {
                                       "client.id": f"erpsync-simulate-{self.tag}", "enable.idempotence": True,
                                       "linger.ms": 5})
        producer = self._producer

        def delivered(err: Any, msg: Any) -> None:
            if err is None:
                self.manifest.submitted += 1
            else:
                self._delivery_errors.append(f"{msg.key()!r}: {err}")

        interval = 1.0 / rate if rate else 0.0
        next_at = last_idle = time.monotonic()
        for plan in submissions:
            # Token bucket of one token: each order waits for its slot, doing ERP/WMS work meanwhile.
            while (now := time.monotonic()) < next_at:
                if on_idle is not None and now - last_idle >= idle_every_s:
                    on_idle()
                    last_idle = time.monotonic()
                else:
                    time.sleep(min(next_at - now, idle_every_s))
            next_at = max(next_at, time.monotonic()) + interval
            producer.produce(ORDERS_TOPIC, key=plan.key.encode(),
                             value=json.dumps(plan.doc, separators=(",", ":")).encode(), on_delivery=delivered)
            producer.poll(0)
        # A storefront keeps its orders until Kafka has them (an outage is waited out, up to librdkafka's
        # message.timeout.ms), playing the ERP and the WMS meanwhile.
        deadline = time.monotonic() + 300
        while (left := producer.flush(1)) and time.monotonic() < deadline:
            if on_idle is not None:
                on_idle()
        if left or self._delivery_errors:
            raise RuntimeError(f"{left} orders not delivered to {ORDERS_TOPIC}; errors: {self._delivery_errors[:5]}")
