"""MkDocs hook: tables generated from the code, so the docs cannot drift from it.

``<!-- settings-table -->`` becomes a table of ``alphacut.config.Settings`` (one row per field:
environment variable, type, default, description) and ``<!-- options-table -->`` a table of
the API request schema ``alphacut.service.schemas.RemoveBgRequest``. Pydantic models are read
from ``model_fields``; a dataclass ``Settings`` (before the pydantic-settings conversion) from
``dataclasses.fields``. A missing description is an empty cell.
"""

from __future__ import annotations

import dataclasses
import enum
import sys
import types
import typing
from pathlib import Path
from typing import Any

from mkdocs.exceptions import PluginError

SETTINGS_MARKER = "<!-- settings-table -->"
OPTIONS_MARKER = "<!-- options-table -->"
_SRC = Path(__file__).resolve().parents[2] / "src"


def _import(module: str, name: str) -> Any:
    if str(_SRC) not in sys.path:
        sys.path.insert(0, str(_SRC))
    try:
        return getattr(__import__(module, fromlist=[name]), name)
    except Exception as exc:  # the build must say why the table is missing
        raise PluginError(f"settings_table hook: cannot import {module}.{name}: {exc!r}") from exc


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def type_name(annotation: Any) -> str:
    """A readable type: ``int | None``, ``png, webp or jpg`` for a Literal, ``list of str``."""
    if annotation is None or annotation is type(None):
        return "None"
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Annotated:
        return type_name(args[0])
    if origin is typing.Literal:
        return "one of " + ", ".join(f"`{value}`" for value in args)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(type_name(arg) for arg in args)
    if origin in (tuple, list, set, frozenset):
        items = [arg for arg in args if arg is not Ellipsis]
        if origin is tuple and len(items) != 1:
            return "tuple of " + ", ".join(type_name(arg) for arg in items)
        return "list of " + (type_name(items[0]) if items else "values")
    if origin is not None:
        return str(annotation).replace("typing.", "")
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation).replace("typing.", "")


def _default_text(value: Any) -> str:
    if value is None:
        return "(none)"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, enum.Enum):
        value = value.value
    if isinstance(value, float):
        return f"`{value:g}`"
    if isinstance(value, Path):
        home = Path.home()
        text = str(value)
        if value == home or home in value.parents:
            text = "~/" + str(value.relative_to(home))
        return f"`{text}`"
    if isinstance(value, tuple | list | set | frozenset):
        return "(none)" if not value else "`" + ",".join(str(item) for item in value) + "`"
    if value == "":
        return "(empty)"
    return f"`{value}`"


def _range(metadata: list[Any]) -> str:
    low = high = None
    for item in metadata:
        low = getattr(item, "ge", low) if getattr(item, "ge", None) is not None else low
        high = getattr(item, "le", high) if getattr(item, "le", None) is not None else high
    if low is None and high is None:
        return ""
    return f" ({'' if low is None else low}..{'' if high is None else high})"


def _rows(model: Any) -> list[tuple[str, str, str, str]]:
    """(name, type, default, description) per field of a pydantic model or a dataclass."""
    rows = []
    fields = getattr(model, "model_fields", None)
    if fields is not None:
        for name, info in fields.items():
            if info.is_required():
                default = "required"
            elif info.default_factory is not None:
                try:
                    default = _default_text(info.default_factory())
                except TypeError:  # a factory that takes the validated data
                    default = ""
            else:
                default = _default_text(info.default)
            kind = type_name(info.annotation) + _range(info.metadata)
            alias = info.validation_alias if isinstance(info.validation_alias, str) else None
            rows.append((alias or name, kind, default, info.description or ""))
        return rows
    if dataclasses.is_dataclass(model):
        hints = typing.get_type_hints(model)
        for item in dataclasses.fields(model):
            if item.default is not dataclasses.MISSING:
                default = _default_text(item.default)
            elif item.default_factory is not dataclasses.MISSING:
                default = _default_text(item.default_factory())
            else:
                default = "required"
            description = item.metadata.get("description", "")
            rows.append((item.name, type_name(hints.get(item.name)), default, description))
        return rows
    raise PluginError(f"settings_table hook: {model!r} is neither a pydantic model nor a dataclass")


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def settings_table() -> str:
    settings = _import("alphacut.config", "Settings")
    config = getattr(settings, "model_config", {}) or {}
    prefix = str(config.get("env_prefix", "ALPHACUT_"))
    rows = []
    for name, kind, default, description in _rows(settings):
        variable = name.upper() if name.upper().startswith(prefix) else prefix + name.upper()
        rows.append((f"`{variable}`", kind, default, description))
    return _table(("variable", "type", "default", "description"), rows)


_JSON_TYPES = {"string": "string", "integer": "int", "number": "number", "boolean": "bool"}


def schema_type(prop: dict[str, Any]) -> str:
    """The type a client sends, from a JSON-schema property: ``int (0..255)``, ``string | null``."""
    if "enum" in prop:
        return "one of " + ", ".join(f"`{value}`" for value in prop["enum"])
    if "const" in prop:
        return f"`{prop['const']}`"
    if "anyOf" in prop:
        text = " | ".join(dict.fromkeys(schema_type(item) for item in prop["anyOf"]))
    else:
        kind = prop.get("type", "any")
        kinds = kind if isinstance(kind, list) else [kind]
        text = " | ".join(_JSON_TYPES.get(item, item) for item in kinds)
    # Constraints behind a BeforeValidator land in the schema as ge/le.
    low = prop.get("minimum", prop.get("ge"))
    high = prop.get("maximum", prop.get("le"))
    if low is not None or high is not None:
        text += f" ({'' if low is None else low}..{'' if high is None else high})"
    return text


def _json_default(info: Any) -> Any:
    """The default as a client would send it (``0``, not a ``Margin`` object)."""
    from pydantic import TypeAdapter

    default = info.get_default(call_default_factory=True)
    try:
        adapter = TypeAdapter(typing.Annotated[info.annotation, *info.metadata])
        return adapter.dump_python(default, mode="json")
    except Exception:  # a type pydantic cannot serialise on its own: show it as it is
        return default


def options_table() -> str:
    """One row per field of the API request: the types are the JSON the API accepts."""
    request = _import("alphacut.service.schemas", "RemoveBgRequest")
    try:
        properties = request.model_json_schema()["properties"]
    except Exception:  # no JSON schema: the Python annotations will do
        properties = {}
    rows = []
    for name, kind, default, description in _rows(request):
        prop = properties.get(name) or {}
        info = request.model_fields[name]
        if not info.is_required():
            default = _default_text(_json_default(info))
        known = "type" in prop or "anyOf" in prop or "enum" in prop or "const" in prop
        rows.append((f"`{name}`", schema_type(prop) if known else kind, default, description))
    return _table(("field", "type", "default", "description"), rows)


def on_page_markdown(markdown: str, **kwargs: Any) -> str:
    if SETTINGS_MARKER in markdown:
        markdown = markdown.replace(SETTINGS_MARKER, settings_table())
    if OPTIONS_MARKER in markdown:
        markdown = markdown.replace(OPTIONS_MARKER, options_table())
    return markdown
