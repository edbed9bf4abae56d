"""``visage serve`` (the HTTP service) and ``visage keys create | list | revoke``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ..names import printable
from .app import app
from .options import JsonOpt, console, emit_json, err_console, read_from
from .options import table as new_table

keys_app = typer.Typer(help="Create, list and revoke the server's API keys.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")

ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", help="TOML settings file (also $VISAGE_CONFIG).", dir_okay=False),
]
DbOpt = Annotated[
    str | None,
    typer.Option("--db", help="Gallery store: SQLAlchemy URL or SQLite file (also $VISAGE_DB)."),
]
BOOTSTRAP_NAME = "bootstrap admin"

if TYPE_CHECKING:  # imported where used: `visage --help` must not load the server (issue 13)
    from ..server.keys_store import ApiKey, KeyStore
    from ..server.settings import Settings


def _key_store(settings: Settings, *, create: bool = True) -> KeyStore:
    from ..server.keys_store import KeyStore
    from ..store import Store

    return KeyStore(Store.open(settings.db_url, anchors=settings.audit_anchors, create=create))


def _keys(config: Path | None, db: str | None, *, read: bool = False) -> KeyStore:
    """The key store of the settings these options select; ``read``: a read-only command,
    which creates no store and says on stderr which store it read."""
    from ..server.settings import load_settings

    settings = load_settings(config=config, db=db)
    store = _key_store(settings, create=not read)
    if read:
        read_from(settings.db_url)
    return store


def _key_record(key: ApiKey) -> dict[str, Any]:
    return {
        "id": key.id,
        "name": key.name,
        "scopes": sorted(s.value for s in key.scopes),
        "collections": ["*"] if key.collections is None else sorted(key.collections),
        "rate_limit": key.rate_limit,
        "devices": None if key.devices is None else sorted(key.devices),
        "created_at": key.created_at.isoformat(),
        "expires_at": key.expires_at.isoformat() if key.expires_at else None,
        "revoked_at": key.revoked_at.isoformat() if key.revoked_at else None,
    }


def _announce_keys(settings: Settings, bootstrap: bool) -> None:
    """Make sure someone can call the server: create and show a first admin key, or say how."""
    store = _key_store(settings)
    if store.active_count() > 0:
        err_console.print(
            "API keys exist; create another with "
            "[bold]visage keys create --scopes identify --collections NAME[/]",
            soft_wrap=True,
        )
        return
    if not bootstrap:
        err_console.print(
            "No API key yet: create one with "
            "[bold]visage keys create --scopes admin --collections '*'[/]",
            soft_wrap=True,
        )
        return
    new = store.create(BOOTSTRAP_NAME, scopes=["admin"], collections=["*"], actor="visage serve")
    err_console.print(
        f"No API key existed, so an admin key was created ({new.key.id}). It is shown once:\n\n"
        f"    [bold]{new.token}[/]\n\n"
        "Use it as 'Authorization: Bearer <key>'; revoke it with "
        f"`visage keys revoke {new.key.id}`.",
        soft_wrap=True,
    )


@app.command()
def serve(
    config: ConfigOpt = None,
    host: Annotated[str | None, typer.Option(help="Interface to listen on [127.0.0.1].")] = None,
    port: Annotated[int | None, typer.Option(help="Port [8000].")] = None,
    db: DbOpt = None,
    index: Annotated[
        str | None, typer.Option(help="Vector index: exact, auto, faiss:… or milvus:<uri> [exact].")
    ] = None,
    detector: Annotated[
        str | None,
        typer.Option(help="Face detector: hog, cnn, blazeface or blazeface-short [hog]."),
    ] = None,
    runtime: Annotated[
        str | None, typer.Option(help="Model runtime: auto, onnx or dlib [auto].")
    ] = None,
    max_body_bytes: Annotated[int | None, typer.Option(help="Request body limit in bytes.")] = None,
    max_pixels: Annotated[int | None, typer.Option(help="Photo pixel limit.")] = None,
    max_faces: Annotated[int | None, typer.Option(help="Faces processed per photo.")] = None,
    threads: Annotated[int | None, typer.Option(help="Requests handled at once [4].")] = None,
    workers: Annotated[
        int | None, typer.Option(help="Server processes sharing the port and the store [1].")
    ] = None,
    rate_limit: Annotated[
        float | None, typer.Option(help="Requests per second per key (0: unlimited).")
    ] = None,
    log_level: Annotated[
        str | None, typer.Option(help="critical, error, warning, info, debug.")
    ] = None,
    bootstrap_key: Annotated[
        bool, typer.Option(help="Create and show an admin key when none exists.")
    ] = True,
) -> None:
    """Run the HTTP service. Settings: flag > $VISAGE_* > config file > default; docs at /docs."""
    import uvicorn

    from ..errors import StorageError
    from ..server.app import create_app
    from ..server.hub import signing_key_path
    from ..server.settings import load_settings
    from ..store import open_engine, shown_url

    settings = load_settings(
        config=config,
        host=host,
        port=port,
        db=db,
        index=index,
        detector=detector,
        runtime=runtime,
        max_body_bytes=max_body_bytes,
        max_pixels=max_pixels,
        max_faces=max_faces,
        threads=threads,
        workers=workers,
        rate_limit=rate_limit,
        log_level=log_level,
    )
    _announce_keys(settings, bootstrap_key)
    err_console.print(
        f"Visage on http://{settings.host}:{settings.port} (web console at /, docs at /docs), "
        f"store {shown_url(settings.db_url)}, index {settings.index}",
        soft_wrap=True,
        markup=False,
        highlight=False,
    )
    try:
        signing_key_path(settings.db_url)
    except StorageError as exc:  # a PostgreSQL store: the key has no folder to live in
        err_console.print(
            f"edge routes answer 503 until the snapshot signing key is set: {exc}",
            soft_wrap=True,
            markup=False,
            highlight=False,
        )
    served: Any
    if settings.workers > 1:  # each worker process builds the app from the same settings
        open_engine(settings.db_url, anchors=settings.audit_anchors).dispose()  # migrate once
        os.environ.update(settings.environment())
        served = "visage.server.app:create_app"
    else:
        served = create_app(settings)
    uvicorn.run(
        served,
        factory=settings.workers > 1,
        workers=settings.workers,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        proxy_headers=False,
        server_header=False,
    )


@keys_app.command("create")
def keys_create(
    scopes: Annotated[str, typer.Option(help="Comma-separated: identify, enroll, admin, device.")],
    collections: Annotated[
        str, typer.Option(help="Comma-separated collection names, or '*' for all.")
    ] = "*",
    name: Annotated[str, typer.Option(help="A label for people reading the key list.")] = "api key",
    rate: Annotated[
        float | None,
        typer.Option(help="This key's requests per second, and its burst (default: the server's)."),
    ] = None,
    expires_in: Annotated[
        str | None, typer.Option(help="Refuse the key after this long: 12h, 30d, 8w.")
    ] = None,
    expires: Annotated[
        str | None, typer.Option(help="Refuse the key from this date (UTC) or ISO time.")
    ] = None,
    device: Annotated[
        list[str] | None,
        typer.Option(help="An edge device id the key speaks for (repeat for more; default any)."),
    ] = None,
    config: ConfigOpt = None,
    db: DbOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Create a key; its secret is printed once and only its hash is stored."""
    from ..server.keys_store import parse_expiry

    expires_at = parse_expiry(expires_in, expires)
    store = _keys(config, db)
    new = store.create(
        name,
        scopes=scopes.split(","),
        collections=collections.split(","),
        rate_limit=rate,
        expires_at=expires_at,
        devices=device,
        actor="visage keys",
    )
    if json_out:
        emit_json({**_key_record(new.key), "token": new.token})
        return
    err_console.print(f"Created {new.key.id}; the key is shown once:", soft_wrap=True)
    console.print(new.token, markup=False, highlight=False)


@keys_app.command("list")
def keys_list(config: ConfigOpt = None, db: DbOpt = None, json_out: JsonOpt = False) -> None:
    """Every key (never its secret), revoked ones included."""
    keys = _keys(config, db, read=True).keys()
    if json_out:
        emit_json([_key_record(k) for k in keys])
        return
    table = new_table(
        "id", "name", "scopes", "collections", "devices", "rate", "created", "expires",
        "revoked", whole={"id"},
    )  # fmt: skip
    for key in keys:
        r = _key_record(key)
        table.add_row(
            r["id"],
            r["name"],
            ",".join(r["scopes"]),
            ",".join(r["collections"]),
            "any" if r["devices"] is None else ",".join(r["devices"]),
            "" if r["rate_limit"] is None else f"{r['rate_limit']:g}/s",
            r["created_at"][:19],
            (r["expires_at"] or "never")[:19],
            (r["revoked_at"] or "")[:19],
        )
    console.print(table)


@keys_app.command("revoke")
def keys_revoke(
    key_id: Annotated[str, typer.Argument(help="The key's id (vk_…).")],
    config: ConfigOpt = None,
    db: DbOpt = None,
) -> None:
    """Revoke a key; the server refuses it from the next request on."""
    key = _keys(config, db).revoke(key_id, actor="visage keys")
    err_console.print(f"Revoked {key.id} ({printable(key.name)}).", soft_wrap=True, markup=False)
