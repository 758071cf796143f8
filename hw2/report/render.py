"""A report as a list of blocks, written as Markdown (figures linked) and as one self-contained
HTML file (figures embedded as base64 PNG, so it opens from disk anywhere)."""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Heading:
    text: str
    level: int = 2


@dataclass
class Para:
    text: str


@dataclass
class Table:
    headers: list[str]
    rows: list[list[str]]


@dataclass
class Image:
    path: Path
    caption: str


@dataclass
class Pre:
    title: str
    text: str


Block = Heading | Para | Table | Image | Pre


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def to_markdown(blocks: list[Block], base: Path) -> str:
    out: list[str] = []
    for b in blocks:
        if isinstance(b, Heading):
            out += ["#" * b.level + " " + b.text, ""]
        elif isinstance(b, Para):
            out += [b.text, ""]
        elif isinstance(b, Table):
            out.append("| " + " | ".join(_md_cell(h) for h in b.headers) + " |")
            out.append("|" + "---|" * len(b.headers))
            out += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in b.rows]
            out.append("")
        elif isinstance(b, Image):
            out += [f"![{b.caption}]({b.path.relative_to(base).as_posix()})", "", f"*{b.caption}*",
                    ""]
        elif isinstance(b, Pre):
            out += [f"**{b.title}**", "", "```", b.text, "```", ""]
    return "\n".join(out)


CSS = """body{font-family:sans-serif;max-width:1400px;margin:1em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.2em;font-size:13px}
td,th{border:1px solid #ccc;padding:3px 7px;text-align:left}th{background:#f0f0f0}
tr:nth-child(even){background:#fafafa}img{max-width:100%;border:1px solid #eee}
figcaption{font-style:italic;color:#555;margin-bottom:1.2em}pre{background:#f6f6f6;padding:.6em;
white-space:pre-wrap;font-size:12px}.failed{color:#b00}.flag{color:#b60;font-weight:bold}"""


def _html_cell(text: str) -> str:
    cls = ""
    if text.startswith(("failed", "interrupted")):
        cls = ' class="failed"'
    elif "⚠" in text:
        cls = ' class="flag"'
    return f"<td{cls}>{html.escape(text)}</td>"


def to_html(blocks: list[Block], title: str) -> str:
    out = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}"
           f"</title><style>{CSS}</style></head><body>"]
    for b in blocks:
        if isinstance(b, Heading):
            out.append(f"<h{b.level}>{html.escape(b.text)}</h{b.level}>")
        elif isinstance(b, Para):
            out.append(f"<p>{html.escape(b.text)}</p>")
        elif isinstance(b, Table):
            out.append("<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in b.headers)
                       + "</tr>")
            out += ["<tr>" + "".join(_html_cell(c) for c in row) + "</tr>" for row in b.rows]
            out.append("</table>")
        elif isinstance(b, Image):
            data = base64.b64encode(b.path.read_bytes()).decode("ascii")
            out.append(f"<figure><img alt='{html.escape(b.caption)}' "
                       f"src='data:image/png;base64,{data}'>"
                       f"<figcaption>{html.escape(b.caption)}</figcaption></figure>")
        elif isinstance(b, Pre):
            out.append(f"<h4>{html.escape(b.title)}</h4><pre>{html.escape(b.text)}</pre>")
    out.append("</body></html>")
    return "\n".join(out)
