"""The operations database (PostgreSQL, schema ``sync``): migrations kept in the repo."""

from pathlib import Path

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
