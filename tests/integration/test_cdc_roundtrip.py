"""Row changes in the ERP and WMS reach Kafka as Debezium envelopes: create, update, delete, tombstone."""

from __future__ import annotations

from .conftest import unique


def _expect_crud(reader, key: dict, change_field: str, new_value) -> None:  # type: ignore[no-untyped-def]
    def is_key(k, _v):  # type: ignore[no-untyped-def]
        return k == key

    _, created, _ = reader.wait_for(lambda k, v: is_key(k, v) and v is not None and v["op"] == "c")
    assert created["before"] is None
    assert all(created["after"][f] == key[f] for f in key)

    _, updated, _ = reader.wait_for(lambda k, v: is_key(k, v) and v is not None and v["op"] == "u")
    assert updated["after"][change_field] == new_value

    _, deleted, off = reader.wait_for(lambda k, v: is_key(k, v) and v is not None and v["op"] == "d")
    assert deleted["after"] is None
    assert all(deleted["before"][f] == key[f] for f in key)

    _, tomb, tomb_off = reader.wait_for(lambda k, v: is_key(k, v) and v is None)
    assert tomb is None and tomb_off == off + 1


def test_erp_items_changes_are_captured(erp, topic_reader) -> None:  # type: ignore[no-untyped-def]
    sku = unique("SKU")
    reader = topic_reader("erp.erp.items")
    erp.execute("INSERT INTO erp.items (sku, description, safety_stock) VALUES (%s, 'widget', 3)", (sku,))
    erp.execute("UPDATE erp.items SET safety_stock = 7 WHERE sku = %s", (sku,))
    erp.execute("DELETE FROM erp.items WHERE sku = %s", (sku,))
    _expect_crud(reader, {"sku": sku}, "safety_stock", 7)


def test_wms_inventory_changes_are_captured(wms, topic_reader) -> None:  # type: ignore[no-untyped-def]
    sku = unique("SKU")
    reader = topic_reader("wms.wms.inventory_balances")
    with wms.cursor() as cur:
        cur.execute(
            "INSERT INTO inventory_balances (sku, location, on_hand) VALUES (%s, 'DC-EAST', 10)", (sku,)
        )
        cur.execute(
            "UPDATE inventory_balances SET on_hand = 4 WHERE sku = %s AND location = 'DC-EAST'", (sku,)
        )
        cur.execute("DELETE FROM inventory_balances WHERE sku = %s AND location = 'DC-EAST'", (sku,))
    _expect_crud(reader, {"sku": sku, "location": "DC-EAST"}, "on_hand", 4)
