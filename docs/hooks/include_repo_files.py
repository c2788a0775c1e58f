"""MkDocs hook: pages that are files of the repository (bench/README.md, CHANGELOG.md,
CONTRIBUTING.md), included so each text exists once.

``<!-- include: PATH -->`` (PATH relative to the repository root) becomes that file's text, with
its links to repository paths rewritten to the site's pages (``docs/models.md`` -> ``models.md``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from mkdocs.exceptions import PluginError

ROOT = Path(__file__).resolve().parents[2]
INCLUDE = re.compile(r"<!-- include: (\S+) -->")
# Repository paths that are pages of the site.
PAGES = {"bench/README.md": "benchmarks.md", "CHANGELOG.md": "changelog.md"}
PAGES["CONTRIBUTING.md"] = "contributing.md"
LINK = re.compile(r"\]\(([^)#\s]+)(#[^)\s]*)?\)")


def _site_link(match: re.Match[str]) -> str:
    target, anchor = match.group(1), match.group(2) or ""
    if target.startswith("docs/"):
        target = target.removeprefix("docs/")
    else:
        target = PAGES.get(target, target)
    return f"]({target}{anchor})"


def _include(match: re.Match[str]) -> str:
    path = ROOT / match.group(1)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise PluginError(f"include_repo_files hook: cannot read {path}: {exc}") from exc
    return LINK.sub(_site_link, text)


def on_page_markdown(markdown: str, **kwargs: Any) -> str:
    return INCLUDE.sub(_include, markdown)
