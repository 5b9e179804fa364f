"""``seenn-server``: serve, migrate and manage API keys."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from typing import Any

from app.settings import Settings, get_settings


def resolve_database(settings: Settings) -> tuple[str, Any]:
    """The database URL to use: ``DATABASE_URL``, else a started embedded server."""
    if settings.database_url:
        return settings.database_url, None
    from app.db.embedded import start_embedded

    print(f"No DATABASE_URL set: starting embedded PostgreSQL in {settings.data_dir}", file=sys.stderr)
    return start_embedded(settings.data_dir)


def _migrate(url: str) -> None:
    from app.db.migrate import upgrade

    upgrade(url)


def cmd_migrate(args: argparse.Namespace, settings: Settings) -> int:
    url, _handle = resolve_database(settings)
    _migrate(url)
    print("database schema is up to date", file=sys.stderr)
    return 0


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    import uvicorn

    url, _handle = resolve_database(settings)
    if settings.database_url is None or args.migrate:
        _migrate(url)
    os.environ["SEENN_DATABASE_URL"] = url
    get_settings.cache_clear()
    uvicorn.run(
        "app.main:create_app",
        factory=True,
        host=args.host or settings.host,
        port=args.port or settings.port,
        log_level=settings.log_level,
        proxy_headers=True,
        forwarded_allow_ips=settings.forwarded_allow_ips,
        timeout_graceful_shutdown=settings.graceful_shutdown_seconds,
        timeout_keep_alive=settings.keep_alive_seconds,
        access_log=False,
    )
    return 0


async def _with_repo(url: str, action: Any) -> Any:
    from app.db.engine import create_engine
    from app.db.repository import Repository

    engine = create_engine(url, get_settings())
    try:
        async with engine.begin() as conn:
            return await action(Repository(conn))
    finally:
        await engine.dispose()


def cmd_keys_create(args: argparse.Namespace, settings: Settings) -> int:
    from ulid import ULID

    from app.domain.keys import generate_key, hash_key, key_hint
    from app.domain.views import now_ms

    url, _handle = resolve_database(settings)
    _migrate(url)
    key = generate_key(args.type, args.mode)
    key_id = str(ULID())
    values = {
        "id": key_id,
        "app_id": args.app,
        "mode": args.mode,
        "kind": args.type,
        "key_hash": hash_key(key),
        "key_hint": key_hint(key),
        "created_at": now_ms(),
    }
    asyncio.run(_with_repo(url, lambda repo: repo.insert_key(values)))
    print(f"Created {args.type} {args.mode} key {key_id} for app {args.app!r}.", file=sys.stderr)
    print("Store it now: it is shown only once.", file=sys.stderr)
    print(key)
    return 0


def cmd_keys_list(args: argparse.Namespace, settings: Settings) -> int:
    from app.domain.views import iso

    url, _handle = resolve_database(settings)
    rows = asyncio.run(_with_repo(url, lambda repo: repo.list_keys(args.app)))
    print(f"{'id':26}  {'app':20}  {'mode':4}  {'type':6}  {'key':20}  status")
    for r in rows:
        status = f"revoked {iso(r['revoked_at'])}" if r["revoked_at"] else "active"
        print(f"{r['id']:26}  {r['app_id']:20}  {r['mode']:4}  {r['kind']:6}  {r['key_hint']:20}  {status}")
    return 0


def cmd_keys_revoke(args: argparse.Namespace, settings: Settings) -> int:
    from app.domain.views import now_ms

    url, _handle = resolve_database(settings)
    done = asyncio.run(_with_repo(url, lambda repo: repo.revoke_key(args.key_id, now_ms())))
    if not done:
        print(f"no active key with id {args.key_id}", file=sys.stderr)
        return 1
    print(f"revoked {args.key_id}", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="seenn-server", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the HTTP server")
    serve.add_argument("--host", default=None)
    serve.add_argument("--port", type=int, default=None)
    serve.add_argument(
        "--migrate", action="store_true", help="apply migrations first (always done when embedded)"
    )
    serve.set_defaults(func=cmd_serve)

    migrate = sub.add_parser("migrate", help="apply database migrations")
    migrate.set_defaults(func=cmd_migrate)

    keys = sub.add_parser("keys", help="manage API keys").add_subparsers(
        dest="keys_command", required=True
    )
    create = keys.add_parser("create", help="create a key (printed as the last line)")
    create.add_argument("--app", required=True)
    create.add_argument("--type", choices=["secret", "public"], default="secret")
    create.add_argument("--mode", choices=["live", "test"], default="test")
    create.set_defaults(func=cmd_keys_create)
    listing = keys.add_parser("list", help="list keys")
    listing.add_argument("--app", default=None)
    listing.set_defaults(func=cmd_keys_list)
    revoke = keys.add_parser("revoke", help="revoke a key by id")
    revoke.add_argument("key_id")
    revoke.set_defaults(func=cmd_keys_revoke)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args, get_settings()) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
