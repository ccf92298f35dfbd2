"""Seed markers per pipeline process: the processes of a cluster (one recovery volume each, each its
own token) never take each other's marker for a store that lost its data; a lost store is every
process's loss."""

from __future__ import annotations

from connectors import ops_db
from connectors.redis import SEED_KEY
from connectors.redis import client as redis_client
from erpsync.runner import SEED_STORES, mark_seeded, stores_to_reseed
from erpsync.settings import Settings

from .conftest import unique


def test_each_process_has_its_marker(settings: Settings) -> None:
    ops_db.migrate(settings)
    first, second = 90 + int(unique("")[-4:], 16) % 1000, 2000 + int(unique("")[-4:], 16) % 1000
    tokens = {first: unique("/recovery-a@"), second: unique("/recovery-b@")}
    store = redis_client(settings)
    try:
        for pid, token in tokens.items():
            mark_seeded(settings, token, SEED_STORES, pid)
        for pid, token in tokens.items():
            assert stores_to_reseed(settings, token, pid) == frozenset()  # the other's marker is no loss
        store.delete(f"{SEED_KEY}:{first}", f"{SEED_KEY}:{second}")  # Redis lost its data
        assert {pid: stores_to_reseed(settings, t, pid) for pid, t in tokens.items()} == \
            {first: frozenset({"redis"}), second: frozenset({"redis"})}
    finally:
        store.delete(f"{SEED_KEY}:{first}", f"{SEED_KEY}:{second}")
        with ops_db.connect(settings) as conn:
            conn.execute("DELETE FROM sync.seeded WHERE store = ANY(%s)", ([f"ops-db:{p}" for p in tokens],))
            conn.commit()
