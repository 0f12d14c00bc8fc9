"""The local overlay's Redis ACL file, produced from the library's own rules.

``python tests/deploy_acl.py`` rewrites ``k8s/overlays/local/redis/users.acl``;
``tests/test_deploy.py`` fails while the committed file differs from a fresh generation, so a
change to the library's rules cannot leave the deployed users behind. The API users' lines
come from ``acl_file_line`` itself, not from a copy of its rules. The passwords are
placeholders, as is every secret under ``k8s/``: a real deployment replaces the Secret.

A Redis aclfile has no comments, so this docstring is the file's only explanation.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Final, Protocol, cast

from securecache.keys import KeyScheme

ROOT: Final = Path(__file__).resolve().parent.parent
ACL_FILE: Final = ROOT / "k8s" / "overlays" / "local" / "redis" / "users.acl"
KEY_PREFIX: Final = "sc"
"""The deployed key prefix (``SECURECACHE_KEY_PREFIX`` in k8s/base)."""
API_USERS: Final = {
    "securecache-public": "change-me-redis-public",
    "securecache-internal": "change-me-redis-internal",
}
"""One Redis user per API, with its placeholder password (the same as in its redis-url)."""
OPS_USER: Final = "securecache-ops"
OPS_PASSWORD: Final = "change-me-redis-ops"
OPS_COMMANDS: Final = ("ping", "scan", "type", "pttl", "get", "unlink", "script|load")
"""What an operator needs to inspect the cache and drop entries under the prefix (the
poisoned-cache runbook in docs/operations.md) and to load the library's scripts
(``securecache redis-scripts``, which the API users may not): no FLUSHALL, no CONFIG, no
writes but UNLINK."""
RULE_MODULES: Final = ("securecache.ops.acl",)
"""Where the library's ACL rules live."""


class AclFileLine(Protocol):
    def __call__(
        self, user: str, password: str, key_prefix: str = ..., *, cluster: bool = ...
    ) -> str: ...


def library_acl_file_line() -> AclFileLine:
    """The library's ``acl_file_line``, from the first module of RULE_MODULES that exists."""
    for name in RULE_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            # Only the module itself (or its package) may be missing: a missing dependency
            # of an existing module is a real error.
            if exc.name in (name, name.rpartition(".")[0]):
                continue
            raise
        return cast(AclFileLine, module.acl_file_line)
    raise ImportError(f"no ACL rules module among {', '.join(RULE_MODULES)}")


def ops_rules(password: str = OPS_PASSWORD) -> list[str]:
    """The operator's rules after ``ACL SETUSER securecache-ops``, shaped as the library's
    ``setuser_rules``: the prefix's keys only, inspection, UNLINK and SCRIPT LOAD
    (docs/deploy-eks.md gives the ElastiCache user the same, checked by tests/test_deploy.py)."""
    pattern = KeyScheme(KEY_PREFIX).pattern
    grants = [f"+{command}" for command in OPS_COMMANDS]
    return ["reset", "on", f">{password}", f"~{pattern}", "resetchannels", "-@all", *grants]


def ops_line() -> str:
    """The operator's user, as a line of the aclfile."""
    return " ".join(["user", OPS_USER, *ops_rules()])


def render() -> str:
    """The aclfile: the default user off (``reset`` leaves it without passwords or rights),
    one user per API from the library's rules, and the operator's user."""
    acl_file_line = library_acl_file_line()
    lines = ["user default reset"]
    lines += [acl_file_line(user, password, KEY_PREFIX) for user, password in API_USERS.items()]
    lines.append(ops_line())
    return "\n".join(lines) + "\n"


def main() -> int:
    ACL_FILE.parent.mkdir(parents=True, exist_ok=True)
    ACL_FILE.write_text(render(), encoding="utf-8")
    print(f"wrote {ACL_FILE.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
