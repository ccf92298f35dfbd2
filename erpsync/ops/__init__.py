"""The operations database (PostgreSQL, schema ``sync``): migrations kept in the repo."""
