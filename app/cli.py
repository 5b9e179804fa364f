"""``seenn-server``: serve, migrate and manage API keys."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from app.settings import Settings, get_settings


def resolve_database(settings: Settings) -> tuple[str, Any]:
    """The database URL to use: ``DATABASE_URL``, else a started embedded server."""
    if settings.database_url:
        return settings.database_url, None
    from app.db.embedded import EmbeddedRefused, start_embedded

    print(
        f"No DATABASE_URL set: starting embedded PostgreSQL in {settings.data_dir}", file=sys.stderr
    )
    try:
        return start_embedded(settings.data_dir, settings.embedded_pg_user)
    except EmbeddedRefused as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def _migrate(url: str) -> None:
    from app.db.migrate import upgrade

    upgrade(url)


def cmd_migrate(args: argparse.Namespace, settings: Settings) -> int:
    url, _handle = resolve_database(settings)
    _migrate(url)
    print("database schema is up to date", file=sys.stderr)
    return 0


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    from app.main import serve
    from app.observability import configure_logging

    configure_logging(settings)  # JSON lines (SEENN_LOG_JSON), uvicorn's own included
    url, _handle = resolve_database(settings)
    if settings.database_url is None or args.migrate:
        _migrate(url)
    # Returns after a graceful shutdown on SIGTERM/SIGINT (see app.main.DrainingServer).
    host, port = args.host or settings.host, args.port or settings.port
    return serve(settings, url, host, port, args.workers)


async def _with_repo(url: str, action: Any) -> Any:
    from app.db.engine import create_engine
    from app.db.keys_repository import KeysRepository

    engine = create_engine(url, get_settings())
    try:
        async with engine.begin() as conn:
            return await action(KeysRepository(conn))
    finally:
        await engine.dispose()


def cmd_keys_create(args: argparse.Namespace, settings: Settings) -> int:
    from ulid import ULID

    from app.domain.clock import now_ms
    from app.domain.keys import generate_key, hash_key, key_hint

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
    asyncio.run(_with_repo(url, lambda repo: repo.insert(values)))
    print(f"Created {args.type} {args.mode} key {key_id} for app {args.app!r}.", file=sys.stderr)
    print("Store it now: it is shown only once.", file=sys.stderr)
    print(key)
    return 0


def cmd_keys_list(args: argparse.Namespace, settings: Settings) -> int:
    from app.domain.views import iso

    url, _handle = resolve_database(settings)
    _migrate(url)  # a fresh database has no tables yet
    rows = asyncio.run(_with_repo(url, lambda repo: repo.of_app(args.app)))
    print(f"{'id':26}  {'app':20}  {'mode':4}  {'type':6}  {'key':20}  status")
    for r in rows:
        status = f"revoked {iso(r['revoked_at'])}" if r["revoked_at"] else "active"
        print(
            f"{r['id']:26}  {r['app_id']:20}  {r['mode']:4}  {r['kind']:6}  "
            f"{r['key_hint']:20}  {status}"
        )
    return 0


def cmd_keys_revoke(args: argparse.Namespace, settings: Settings) -> int:
    from app.domain.clock import now_ms

    url, _handle = resolve_database(settings)
    _migrate(url)
    done = asyncio.run(_with_repo(url, lambda repo: repo.revoke(args.key_id, now_ms())))
    if not done:
        print(f"no active key with id {args.key_id}", file=sys.stderr)
        return 1
    print(f"revoked {args.key_id}", file=sys.stderr)
    return 0


def cmd_signing_rotate(args: argparse.Namespace, settings: Settings) -> int:
    from datetime import timedelta

    from app.db import auth_repository

    url, _handle = resolve_database(settings)
    _migrate(url)
    grace = timedelta(seconds=settings.token_lifetime_seconds + settings.auth_cache_seconds)
    kid, changed = asyncio.run(
        _with_repo(
            url,
            lambda repo: auth_repository.rotate_signing_key(repo.conn, grace, args.revoke_previous),
        )
    )
    if args.revoke_previous:
        print(
            f"New signing key {kid}; {changed} previous key(s) deleted: their tokens are "
            f"refused within {settings.auth_cache_seconds:g} s.",
            file=sys.stderr,
        )
    else:
        print(
            f"New signing key {kid}; {changed} previous key(s) retired: they verify the "
            f"tokens they signed until those expire (at most {grace.total_seconds():g} s).",
            file=sys.stderr,
        )
    print(kid)
    return 0


def cmd_signing_list(args: argparse.Namespace, settings: Settings) -> int:
    from app.db import auth_repository
    from app.domain.views import iso

    url, _handle = resolve_database(settings)
    _migrate(url)
    rows = asyncio.run(_with_repo(url, lambda repo: auth_repository.list_signing_keys(repo.conn)))
    print(f"{'kid':26}  {'created':24}  status")
    for r in rows:
        status = f"retired {iso(r['retired_at'])}" if r["retired_at"] else "signing"
        print(f"{r['kid']:26}  {iso(r['created_at']):24}  {status}")
    return 0


def cmd_apps_set(args: argparse.Namespace, settings: Settings) -> int:
    from app.db import auth_repository

    url, _handle = resolve_database(settings)
    _migrate(url)
    value = args.token_only == "on"
    asyncio.run(
        _with_repo(url, lambda repo: auth_repository.set_token_only(repo.conn, args.app, value))
    )
    what = "only subscriber tokens" if value else "public keys and subscriber tokens"
    print(
        f"App {args.app!r} now reads with {what} (applies within "
        f"{settings.auth_cache_seconds:g} s).",
        file=sys.stderr,
    )
    return 0


def cmd_apps_show(args: argparse.Namespace, settings: Settings) -> int:
    from app.db import auth_repository

    url, _handle = resolve_database(settings)
    _migrate(url)
    value = asyncio.run(
        _with_repo(url, lambda repo: auth_repository.token_only(repo.conn, args.app))
    )
    print(f"app {args.app}: token-only {'on' if value else 'off'}")
    return 0


async def _bootstrap_key(repo: Any, app_id: str, values: dict[str, Any]) -> list[dict[str, Any]]:
    """Insert ``values`` unless ``app_id`` has an active key; returns the active keys found."""
    from app.db import auth_repository

    # Two first runs at once (say, two init containers) must not both create a key.
    await auth_repository.lock_bootstrap(repo.conn, app_id)
    active = [r for r in await repo.of_app(app_id) if r["revoked_at"] is None]
    if not active:
        await repo.insert(values)
    return active


def cmd_keys_bootstrap(args: argparse.Namespace, settings: Settings) -> int:
    """First run: a secret test key for the app, only if it has no active key yet."""
    from ulid import ULID

    from app.domain.clock import now_ms
    from app.domain.keys import generate_key, hash_key, key_hint

    url, _handle = resolve_database(settings)
    _migrate(url)
    key = generate_key("secret", "test")
    key_id = str(ULID())
    values = {
        "id": key_id,
        "app_id": args.app,
        "mode": "test",
        "kind": "secret",
        "key_hash": hash_key(key),
        "key_hint": key_hint(key),
        "created_at": now_ms(),
    }
    active = asyncio.run(_with_repo(url, lambda repo: _bootstrap_key(repo, args.app, values)))
    if active:
        hints = ", ".join(f"{r['key_hint']} ({r['kind']} {r['mode']})" for r in active)
        print(
            f"App {args.app!r} already has {len(active)} active key(s): {hints}.\n"
            "No key was created (keys are shown only once, when created).\n"
            f"Create another with: seenn-server keys create --app {args.app}"
            " [--type secret|public] [--mode test|live]\n"
            f"  with Docker Compose: docker compose run --rm api keys create --app {args.app}",
            file=sys.stderr,
        )
        return 0
    print(
        f"Created secret test key {key_id} for app {args.app!r}; store it now, it is shown"
        " only once.\nSend it as the header 'Authorization: Bearer <key>'. The key:",
        file=sys.stderr,
    )
    print(key)
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
    serve.add_argument(
        "--workers",
        type=int,
        default=1,
        help="server processes sharing the port (one per core); each has its own pool, "
        "LISTEN connection and per-process limits",
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
    bootstrap = keys.add_parser(
        "bootstrap",
        help="first run: create and print a secret test key unless the app already has a key",
    )
    bootstrap.add_argument("--app", required=True)
    bootstrap.set_defaults(func=cmd_keys_bootstrap)

    signing = sub.add_parser(
        "signing-keys", help="manage the keys that sign subscriber tokens"
    ).add_subparsers(dest="signing_command", required=True)
    rotate = signing.add_parser(
        "rotate", help="sign new tokens with a new key; older keys verify until their tokens expire"
    )
    rotate.add_argument(
        "--revoke-previous",
        action="store_true",
        help="delete the older keys at once: every token they signed is refused (a leak)",
    )
    rotate.set_defaults(func=cmd_signing_rotate)
    signing.add_parser("list", help="list signing keys").set_defaults(func=cmd_signing_list)

    apps = sub.add_parser("apps", help="per-app settings").add_subparsers(
        dest="apps_command", required=True
    )
    app_set = apps.add_parser("set", help="change an app's settings")
    app_set.add_argument("--app", required=True)
    app_set.add_argument(
        "--token-only",
        choices=["on", "off"],
        required=True,
        help="on: public keys are refused, reads need a subscriber token (POST /v1/tokens)",
    )
    app_set.set_defaults(func=cmd_apps_set)
    app_show = apps.add_parser("show", help="show an app's settings")
    app_show.add_argument("--app", required=True)
    app_show.set_defaults(func=cmd_apps_show)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args, get_settings()) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
