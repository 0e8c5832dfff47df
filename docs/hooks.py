"""MkDocs hook: the config reference is generated from the pydantic schema at build time, so
the page cannot drift from the code (``<!-- config-schema -->`` in ``reference/config.md``)."""

from __future__ import annotations

import json
import types
import typing
from typing import Any

MARKER = "<!-- config-schema -->"


def on_page_markdown(markdown: str, page: Any, **_: Any) -> str:
    if MARKER not in markdown:
        return markdown
    return markdown.replace(MARKER, config_reference())


def config_reference() -> str:
    from fedsparse.clients.registry import sections
    from fedsparse.config import ExperimentConfig

    lines: list[str] = []
    _model_table(ExperimentConfig, "", lines)
    lines += ["", "## Method options", "",
              "Each method validates its own section, `method.<section>`; unknown keys are refused.", ""]
    for section, method in sorted(sections().items()):
        fields = method.Options.model_fields
        if not fields:
            continue
        lines += [f"### `method.{section}`", "", f"Read by `{method.name}`"
                  + (" and the methods of its family" if section == "pruning" else "") + ".", ""]
        lines += _rows(method.Options, f"method.{section}.")
        lines.append("")
    return "\n".join(lines)


def _model_table(model: type, prefix: str, lines: list[str]) -> None:
    """One table per config section, nested models as their own sections."""
    title = f"`{prefix.rstrip('.')}`" if prefix else "Top level"
    doc = (model.__doc__ or "").strip().split("\n\n")[0].replace("\n", " ")
    lines += [f"## {title}", ""] + ([doc, ""] if doc and prefix else [])
    lines += _rows(model, prefix)
    lines.append("")
    for name, field in model.model_fields.items():
        sub = _submodel(field.annotation)
        if sub is not None and name != "method":
            _model_table(sub, f"{prefix}{name}.", lines)


def _rows(model: type, prefix: str) -> list[str]:
    rows = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for name, field in model.model_fields.items():
        if _submodel(field.annotation) is not None and name != "method":
            continue
        default = field.get_default(call_default_factory=True)
        if name == "method" and not prefix:
            default = {"name": getattr(default, "name", "dense")}
        shown = "required" if field.is_required() else f"`{_dump(default)}`"
        meaning = (field.description or "").replace("|", "\\|").replace("\n", " ")
        rows.append(f"| `{prefix}{name}` | {_type_name(field.annotation)} | {shown} | {meaning} |")
    return rows


def _submodel(annotation: Any) -> type | None:
    from pydantic import BaseModel

    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None


def _dump(value: Any) -> str:

    value = _plain(value)
    try:
        return json.dumps(value, default=str)
    except TypeError:
        return str(value)


def _plain(value: Any) -> Any:
    from pydantic import BaseModel

    if isinstance(value, BaseModel):
        return value.model_dump(mode="json", exclude_none=True)
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return " \\| ".join(f"`{a}`" for a in typing.get_args(annotation))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(annotation))
    if origin is not None:
        args = ", ".join(_type_name(a) for a in typing.get_args(annotation))
        return f"{getattr(origin, '__name__', str(origin))}[{args}]"
    return getattr(annotation, "__name__", str(annotation)).replace("NoneType", "none")
