"""A sub-tab's own strings: labels the browser translates, and run-time messages in the
language of the browser that sent the request (``Accept-Language``), or Settings' choice
(as ui/i18n.py decides)."""

from __future__ import annotations

from typing import Any

from gradio.i18n import I18nData

from ui.i18n import request_locale


class Strings:
    def __init__(self, tables: dict[str, dict[str, str]]):
        missing = set(tables["en"]) ^ set(tables["zh-CN"])
        if missing:
            raise KeyError(f"strings without both English and Chinese text: {sorted(missing)}")
        self.tables = tables

    def tr(self, key: str) -> I18nData:
        """A label Gradio translates; KeyError for a key with no entry (none ship untranslated)."""
        if key not in self.tables["en"]:
            raise KeyError(f"UI string {key!r} has no entry in its module's STRINGS")
        return I18nData(key)

    def say(self, key: str, request: Any = None, **values: Any) -> str:
        """``key`` in the request's language, with ``{name}`` fields filled from ``values``."""
        if key not in self.tables["en"]:
            raise KeyError(f"UI string {key!r} has no entry in its module's STRINGS")
        locale = request_locale(request)
        text = self.tables.get(locale, {}).get(key) or self.tables["en"][key]
        return text.format(**values) if values else text
