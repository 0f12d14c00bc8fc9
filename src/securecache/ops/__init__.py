"""Operations tooling: migrations, loading, seeding, Redis ACL rules, embedded dev servers, CLI.

Nothing in the runtime library imports this package: an application that only reads and
writes records never loads the process supervisor or the migration SQL. POSIX-only modules
(``fcntl``, ``pwd``) are imported by :mod:`securecache.ops.dev` alone, and only the ``dev``
command imports that.
"""
