"""The server's settings, validated: CLI flag > environment (``VISAGE_*``) > config file > default.

The config file is TOML with the same keys as the fields below (``port = 8080``); it is named
by ``--config`` or ``$VISAGE_CONFIG``. Unknown keys and out-of-range values are refused at
start-up with a message naming the key, never discovered at the first request.

    >>> Settings(port=9000).port
    9000
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    InitSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from ..errors import InputError
from ..gallery.index import IndexSpec
from ..imageio import DEFAULT_MAX_PIXELS
from ..models import DETECTORS
from ..store import database_url, default_url
from .schemas import MAX_BATCH

MiB = 1024 * 1024


class Settings(BaseSettings):
    """Everything ``visage serve`` can be told. Each field is also ``$VISAGE_<NAME>``."""

    model_config = SettingsConfigDict(env_prefix="VISAGE_", extra="forbid", frozen=True)

    config: Path | None = Field(
        None, description="TOML file read for settings not given otherwise."
    )
    host: str = Field("127.0.0.1", description="Interface to listen on (loopback by default).")
    port: int = Field(8000, ge=1, le=65535)
    db: str = Field(
        default_factory=default_url,
        description="SQLAlchemy URL or SQLite file of the gallery store (it holds the API keys).",
    )
    audit_anchors: Path | None = Field(
        None,
        description="Append-only file for signed checkpoints of the audit chain's head (default: "
        "beside a SQLite store; unset for other stores means not anchored). Keep it off the "
        "database host.",
    )
    index: str = Field(
        "exact",
        description="Vector index: exact, auto, faiss:<factory>[;<knobs>] or milvus:<uri> (one "
        "index shared by every server naming that Milvus).",
    )
    detector: str = Field(
        "hog",
        description="Face detector for photos: hog, cnn, blazeface or blazeface-short (BlazeFace "
        "runs large photos in tiles, so small faces in group photos are found).",
    )
    runtime: Literal["auto", "onnx", "dlib"] = Field(
        "auto", description="Model runtime: auto (ONNX when available), onnx or dlib."
    )
    upsample: int = Field(1, ge=0, le=4, description="Times photos are upsampled before detection.")
    max_body_bytes: int = Field(
        20 * MiB, ge=1024, description="Largest request body accepted (413 above it)."
    )
    max_pixels: int = Field(
        DEFAULT_MAX_PIXELS,
        ge=64 * 64,
        description="Largest photo in pixels, checked before decoding.",
    )
    max_faces: int = Field(
        20, ge=1, le=1000, description="Most faces processed in one photo (422 above it)."
    )
    max_batch: int = Field(
        MAX_BATCH,
        ge=1,
        le=MAX_BATCH,
        description="Most photos or embeddings in one group or bulk request.",
    )
    threads: int = Field(
        4,
        ge=1,
        le=256,
        description="Requests handled at once; the rest queue in arrival order (see "
        "docs/performance-service.md for why a few beat many).",
    )
    workers: int = Field(
        1,
        ge=1,
        le=64,
        description="Server processes on one port and one store (searches in parallel, the audit "
        "chain linear across them). Each process keeps its own rate-limit buckets and /metrics.",
    )
    edge_max_ttl_s: int = Field(
        24 * 3600,
        ge=60,
        le=30 * 24 * 3600,
        description="Longest life of an edge snapshot, whatever a device asks for: how long a "
        "person deleted here may still be matched offline.",
    )
    rate_limit: float = Field(
        50.0, ge=0, description="Requests per second per API key (0: unlimited); keys may override."
    )
    rate_burst: int = Field(
        100,
        ge=1,
        description="Requests a key without a rate of its own may make at once before the rate "
        "applies (a key's own rate is its burst too).",
    )
    auth_failures_per_minute: int = Field(
        20,
        ge=0,
        le=100_000,
        description="Failed authentications a client address may make at once, and then per "
        "minute, before its requests are refused with 429 ahead of any key lookup (tokens "
        "already served to the address still are); 0: unlimited.",
    )
    eval_scratch: Path | None = Field(
        None,
        description="Folder where POST /v1/eval/verify extracts an uploaded photos archive "
        "(default: the system's temporary folder); each run's subfolder is removed when it ends.",
    )
    eval_reports: Path | None = Field(
        None,
        description="Folder where the last evaluation report (numbers and figures, never photos "
        "or embeddings) is kept for every worker and across restarts (default: an .eval folder "
        "beside a SQLite store; for other stores unset keeps it in each process's memory).",
    )
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Flags (init arguments) first, then the environment, then the config file."""
        return init_settings, env_settings, _ConfigFile(settings_cls, init_settings, env_settings)

    @field_validator("index")
    @classmethod
    def _known_index(cls, value: str) -> str:
        """Check the index description at start-up rather than when a collection first loads."""
        if value != "auto":
            IndexSpec.parse(value)
        return value

    @field_validator("detector")
    @classmethod
    def _known_detector(cls, value: str) -> str:
        """Accept exactly the detector names the pipeline and the CLI accept."""
        if value not in DETECTORS:
            raise ValueError(f"unknown detector {value!r}; choose one of {', '.join(DETECTORS)}")
        return value

    @field_validator("eval_scratch")
    @classmethod
    def _existing_folder(cls, value: Path | None) -> Path | None:
        """A missing scratch folder is said at start-up, not as the first evaluation's 500."""
        if value is not None and not value.is_dir():
            raise ValueError(f"{value} is not a folder")
        return value

    @field_validator("eval_reports")
    @classmethod
    def _folder_or_nothing(cls, value: Path | None) -> Path | None:
        """The reports folder is made when the first report is kept; a file in its place is
        said at start-up."""
        if value is not None and value.exists() and not value.is_dir():
            raise ValueError(f"{value} is not a folder")
        return value

    def environment(self) -> dict[str, str]:
        """These settings as ``$VISAGE_*`` variables, for worker processes to load the same."""
        values = self.model_dump(exclude={"config"}, exclude_none=True)
        return {f"VISAGE_{name.upper()}": str(value) for name, value in values.items()}

    @property
    def db_url(self) -> str:
        """``db`` as a SQLAlchemy URL (a file path becomes a SQLite URL)."""
        return database_url(self.db)


class _ConfigFile(PydanticBaseSettingsSource):
    """Values from the TOML file named by the ``config`` flag or ``$VISAGE_CONFIG``."""

    def __init__(
        self,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
    ) -> None:
        super().__init__(settings_cls)
        flags = init_settings.init_kwargs if isinstance(init_settings, InitSettingsSource) else {}
        path = flags.get("config") or env_settings().get("config")
        self._values = _read_toml(Path(path)) if path else {}

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return self._values.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(self._values)


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except OSError as exc:
        raise InputError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"config file {path} is not valid TOML: {exc}") from None


def load_settings(**flags: Any) -> Settings:
    """Settings from ``flags`` (``None`` values mean 'not given'), the environment and the file.

    Raises :class:`~visage.errors.InputError` listing every invalid setting.
    """
    given = {k: v for k, v in flags.items() if v is not None}
    try:
        return Settings(**given)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'settings'}: {err['msg']}"
            for err in exc.errors()
        )
        raise InputError(f"invalid settings: {problems}") from None
