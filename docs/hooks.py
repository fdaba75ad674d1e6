"""mkdocs hooks (``hooks:`` in mkdocs.yml): two fixes to what the API sections render from the
docstrings, which are written to be read in a terminal as much as on these pages.

- A docstring cites a page by its path in the repository, ``docs/conventions.md``: on the site
  that path becomes a link to the page. A path that names no page is a warning, which fails the
  strict build.
- A reST literal-block marker (a paragraph ending in ``::``) reads ``:`` on the page; the indented
  block after it is already a code block in Markdown.
"""

from __future__ import annotations

import html
import logging
import re

log = logging.getLogger("mkdocs.plugins.growbench")

CITED_PAGE = re.compile(r"(?<![\w/.-])docs/((?:[\w-]+/)*[\w.-]+\.md)\b")
TAG = re.compile(r"(<[^>]*>)")
LITERAL_MARKER = re.compile(r"(?<=[^\s:]):(?=:</p>)|<p>::</p>")


def on_page_content(html_text, page, config, files):
    return _link_cited_pages(LITERAL_MARKER.sub("", html_text), page, files)


def _link_cited_pages(html_text, page, files):
    parts = TAG.split(html_text)
    in_link = in_pre = False
    for index, part in enumerate(parts):
        if part.startswith("<"):
            name = part[1:].split(None, 1)[0].rstrip(">").lower() if len(part) > 2 else ""
            in_link = {"a": True, "/a": False}.get(name, in_link)
            in_pre = {"pre": True, "/pre": False}.get(name, in_pre)
            continue
        if in_link or in_pre or "docs/" not in part:
            continue
        parts[index] = CITED_PAGE.sub(lambda match: _link(match, page, files), part)
    return "".join(parts)


def _link(match, page, files):
    target = files.get_file_from_path(match.group(1))
    if target is None or not target.is_documentation_page():
        log.warning("%s cites %s, which is not a page of the site", page.file.src_uri, match[0])
        return match[0]
    url = html.escape(target.url_relative_to(page.file))
    return f'<a href="{url}">{match[0]}</a>'
