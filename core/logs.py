"""Logging set-up: text lines for people, or one JSON object per line (``log.format: json``)."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from meshscale.config import Config


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time (UTC, ISO 8601), level, logger, message[, error]."""

    def format(self, record: logging.LogRecord) -> str:
        out = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            out["error"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


def configure_logging(config: Config | None, level: str | None = None) -> None:
    name = (level or (config.log.level if config else "info")).upper()
    name = {"WARN": "WARNING", "TRACE": "DEBUG"}.get(name, name)
    handler = logging.StreamHandler()
    if config is not None and config.log.format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=getattr(logging, name, logging.INFO), handlers=[handler],
                        force=True)
