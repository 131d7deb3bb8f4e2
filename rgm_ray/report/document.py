"""A report as data (sections of text, tables and figures) rendered to Markdown and to one
self-contained HTML file (images embedded as base64), so both outputs always say the same thing."""

from __future__ import annotations

import base64
import html
import os
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Table:
    headers: list[str]
    rows: list[list[str]]
    caption: str = ""


@dataclass(frozen=True)
class Figure:
    path: Path
    caption: str


@dataclass
class Section:
    title: str
    paragraphs: list[str] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)


def to_markdown(title: str, sections: list[Section], base: Path) -> str:
    """Markdown with figures linked relative to ``base`` (the report's directory)."""
    out = [f"# {title}", ""]
    for section in sections:
        out += [f"## {section.title}", ""]
        for paragraph in section.paragraphs:
            out += [paragraph, ""]
        for table in section.tables:
            if table.caption:
                out += [f"*{table.caption}*", ""]
            out.append("| " + " | ".join(table.headers) + " |")
            out.append("|" + "---|" * len(table.headers))
            out += ["| " + " | ".join(row) + " |" for row in table.rows]
            out.append("")
        for figure in section.figures:
            out += [f"![{figure.caption}]({os.path.relpath(figure.path, base)})", f"*{figure.caption}*", ""]
    return "\n".join(out)


def _png_data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


_STYLE = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:0.5em 0 1.5em}td,th{border:1px solid #ccc;padding:4px 10px;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}figure{display:inline-block;margin:0.5em;
vertical-align:top}figure img{max-width:480px;border:1px solid #ddd}figcaption{font-size:0.85em;color:#555;
max-width:480px}.caption{font-style:italic;color:#444}"""


def to_html(title: str, sections: list[Section]) -> str:
    """One HTML file with every figure embedded (opens offline, can be mailed as is)."""
    esc = html.escape
    out = [f"<!doctype html><html><head><meta charset='utf-8'><title>{esc(title)}</title>",
           f"<style>{_STYLE}</style></head><body><h1>{esc(title)}</h1>"]
    for section in sections:
        out.append(f"<h2>{esc(section.title)}</h2>")
        out += [f"<p>{esc(p)}</p>" for p in section.paragraphs]
        for table in section.tables:
            if table.caption:
                out.append(f"<p class='caption'>{esc(table.caption)}</p>")
            out.append("<table><tr>" + "".join(f"<th>{esc(h)}</th>" for h in table.headers) + "</tr>")
            out += ["<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in table.rows]
            out.append("</table>")
        for figure in section.figures:
            out.append(f"<figure><img src='{_png_data_uri(figure.path)}' alt='{esc(figure.caption)}'>"
                       f"<figcaption>{esc(figure.caption)}</figcaption></figure>")
    out.append("</body></html>")
    return "\n".join(out)
