"""The ERP and the WMS as owners of master data: seed a run's catalog, then wait until the pipeline has it.

Runs once, before the storefronts open: ``seed`` writes customers, items and price lists (ERP) and
stock (WMS), idempotently; ``wait_ready`` waits until the pipeline has published what intake
validates the first orders against.
"""

from __future__ import annotations

import json
import logging
import time

from erpsync.simulate.systems import Role

log = logging.getLogger(__name__)


class MasterData(Role):
    """Seeds the run's catalog into the ERP and the WMS and waits for the pipeline to read it."""

    def seed(self) -> None:
        """Insert the catalog: customers, items, price lists (ERP) and stock (WMS). Idempotent."""
        cat = self.scenario.catalog
        erp = self.systems.erp()
        with erp.transaction(), erp.cursor() as cur:
            cur.executemany(
                "INSERT INTO erp.items (sku, description, safety_stock, status) VALUES (%s, %s, %s, %s)"
                " ON CONFLICT DO NOTHING",
                [(i.sku, i.description, i.safety_stock, i.status) for i in cat.items])
            cur.executemany(
                "INSERT INTO erp.customers (customer_id, account_no, name, price_list_id, credit_limit,"
                " credit_hold, tax_jurisdiction) VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
                [(c.customer_id, c.account_no, c.name, c.price_list_id, c.credit_limit, c.credit_hold,
                  c.tax_jurisdiction) for c in cat.customers])
            cur.executemany(
                "INSERT INTO erp.price_list_lines (price_list_id, sku, unit_price, valid_from, valid_to)"
                " VALUES (%s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
                [(p.price_list_id, p.sku, p.unit_price, p.valid_from, p.valid_to) for p in cat.prices])
        with self.systems.wms_tx() as cur:
            cur.executemany(
                "INSERT IGNORE INTO inventory_balances (sku, location, on_hand, allocated, in_transit, updated_at)"
                " VALUES (%s, %s, %s, 0, %s, UTC_TIMESTAMP(6))",
                [(s.sku, s.location, s.on_hand, s.in_transit) for s in cat.stock])
        log.info("seeded %d customers, %d items, %d price lines, %d stock rows (tag %s)", len(cat.customers),
                 len(cat.items), len(cat.prices), len(cat.stock), self.scenario.tag)

    def wait_ready(self, timeout_s: float) -> bool:
        """Wait until the pipeline has read the seeded catalog; False after timeout_s.

        Redis ``ats:<channel>`` has every seeded SKU on every channel (items and stock read), and
        canonical records exist for every seeded customer and price line: intake validates the
        first orders against them. On a busy machine Debezium can deliver the price lines seconds
        after the items, and an order validated before its prices is rejected as a price mismatch.
        """
        import redis  # noqa: PLC0415

        from connectors.redis import client as redis_client  # noqa: PLC0415

        store = redis_client(self.systems.settings, reader=True)
        skus = [i.sku for i in self.scenario.catalog.items]
        deadline = time.monotonic() + timeout_s
        try:
            while not all(None not in store.hmget(f"ats:{c.id}", skus) for c in self.scenario.channels):
                if time.monotonic() >= deadline:
                    return False
                time.sleep(0.5)
        except redis.RedisError as exc:
            log.warning("cannot read Redis to see whether the pipeline is ready: %s", exc)
            return False
        finally:
            store.close()
        return self._wait_catalog_published(deadline)

    def _wait_catalog_published(self, deadline: float) -> bool:
        """Canonical records for every seeded customer and (price list, SKU), before the deadline."""
        from erpsync.topics import Follower  # noqa: PLC0415 - the pure Scenario must not need Kafka

        cat = self.scenario.catalog
        waiting: set[tuple[str, tuple[str, ...]]] = {("canonical.customer", (c.customer_id,)) for c in cat.customers}
        waiting |= {
            ("canonical.price", (p.price_list_id, p.sku)) for p in cat.prices}
        since_ms = int(time.time() * 1000) - 3_600_000
        with Follower(self.systems.settings, ["canonical.customer", "canonical.price"], since_ms=since_ms,
                      group=f"erpsync-simulate-{self.scenario.tag}") as reader:
            while waiting and time.monotonic() < deadline:
                msg = reader.poll(0.5)
                if msg is None or self.scenario.tag not in (key := (msg.key() or b"").decode()):
                    continue
                try:
                    values = set(json.loads(key))
                except (ValueError, TypeError):
                    continue
                waiting = {(topic, want) for topic, want in waiting
                           if topic != msg.topic() or not values.issuperset(want)}
        if waiting:
            log.warning("the pipeline has not published %d seeded customers/price lines", len(waiting))
        return not waiting
