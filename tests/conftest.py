"""Fixtures live in ``fix_*`` modules (psycopg's layout); this file only plugs them in."""

pytest_plugins = ["fix_cluster", "fix_servers"]
