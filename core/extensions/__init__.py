"""Kiln extensions: folders in extensions/ with a ``kiln_extension.py`` that defines
``setup(api: ExtensionAPI)``. README.md, section "Extensions", has the guide and an example.

Light on purpose: importing this package imports neither torch nor gradio.
"""

from core.extensions.api import ExtensionAPI, RouteEntry, ScriptEntry, TabEntry
from core.extensions.loader import ENTRY_POINT, load_extensions
from core.extensions.registry import DISABLED, FAILED, LOADED, NOT_RUN, ExtensionRecord, ExtensionRegistry

__all__ = [
    "DISABLED", "ENTRY_POINT", "FAILED", "LOADED", "NOT_RUN", "ExtensionAPI", "ExtensionRecord",
    "ExtensionRegistry", "RouteEntry", "ScriptEntry", "TabEntry", "load_extensions",
]
