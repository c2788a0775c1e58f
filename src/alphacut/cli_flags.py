"""CLI flags generated from the options definition (``pipeline/options.py``).

Every field of ``RemoveOptions`` becomes a flag of ``alphacut remove`` with the field's
description as help; values go to the same validation as the API's, so a bad value gets the
same message. Booleans are switches; everything else is passed as text and parsed by the
definition (``--crop-margin 10%``, ``--format jpeg``).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterable
from typing import Annotated, Any, TypeVar, cast

import typer
from pydantic.fields import FieldInfo

from alphacut.pipeline.options import RemoveOptions

# rembg's short names for the matting thresholds, and eval's older spelling.
FLAG_ALIASES: dict[str, tuple[str, ...]] = {
    "alpha_matting_foreground_threshold": ("--af",),
    "alpha_matting_background_threshold": ("--ab",),
    "alpha_matting_erode_size": ("--ae",),
    "guided_upsampling": (" /--bilinear-upsampling",),
}
# The options that change the mask (what `alphacut eval` measures).
MASK_OPTIONS = (
    "post_process_mask",
    "alpha_matting",
    "alpha_matting_foreground_threshold",
    "alpha_matting_background_threshold",
    "alpha_matting_erode_size",
    "mask_quality",
    "guided_upsampling",
)

F = TypeVar("F", bound=Callable[..., Any])


def flag_name(field: str) -> str:
    return "--" + field.replace("_", "-")


def _parameter(name: str, info: FieldInfo) -> inspect.Parameter:
    help_text = info.description or ""
    aliases = FLAG_ALIASES.get(name, ())
    if info.annotation is bool:
        default = bool(info.default)
        flag = flag_name(name)
        decls = (f"{flag}/--no-{flag[2:]}",) if default else (flag,)
        option = typer.Option(*decls, *aliases, help=help_text)
        return inspect.Parameter(
            name,
            inspect.Parameter.KEYWORD_ONLY,
            default=default,
            annotation=Annotated[bool, option],
        )
    shown = RemoveOptions().model_dump(mode="json")[name]
    option = typer.Option(
        flag_name(name),
        *aliases,
        help=help_text,
        show_default=False if shown is None else str(shown),
    )
    return inspect.Parameter(
        name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[str | None, option]
    )


def with_option_flags(fields: Iterable[str] | None = None) -> Callable[[F], F]:
    """Give a command one flag per option (all of them, or ``fields``); the command receives
    them as ``**options`` (unset ones are None, so the definition's default applies)."""
    names = list(fields) if fields is not None else list(RemoveOptions.model_fields)

    def decorate(command: F) -> F:
        signature = inspect.signature(command, eval_str=True)
        fixed = [
            p for p in signature.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD
        ]
        flags = [_parameter(name, RemoveOptions.model_fields[name]) for name in names]

        @functools.wraps(command)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            return command(*args, **kwargs)

        vars(wrapper)["__signature__"] = signature.replace(parameters=[*fixed, *flags])
        return cast(F, wrapper)

    return decorate
