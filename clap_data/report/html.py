"""One self-contained HTML page: the report opens from a file, an e-mail attachment or an archive, offline.

Figures are PNG ``data:`` URIs, the style sheet is inline, and there is no script and no external
resource at all, so nothing can fail to load and no browser policy (file URLs, CSP) gets in the way.
Every piece of text from a dataset (task names, quarantine reasons, paths) goes through ``html.escape``.
Tables carry ``id`` attributes so that scripts and tests can find the numbers in them.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from dataclasses import dataclass, field

_CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: #222; margin: 0; background: #f6f6f4; }
header { background: #26324a; color: #fff; padding: 18px 32px; }
header h1 { margin: 0 0 4px; font-size: 22px; }
header p { margin: 2px 0; color: #cfd6e4; font-size: 13px; }
nav { padding: 8px 32px; background: #e8e9ee; font-size: 13px; }
nav a { margin-right: 14px; color: #26324a; }
main { padding: 8px 32px 40px; max-width: 1400px; }
section { background: #fff; border: 1px solid #ddd; border-radius: 6px; padding: 4px 20px 16px; margin: 18px 0; }
h2 { font-size: 18px; border-bottom: 1px solid #eee; padding-bottom: 6px; }
h3 { font-size: 15px; margin: 18px 0 6px; }
figure { margin: 10px 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { font-size: 12px; color: #555; }
table { border-collapse: collapse; margin: 8px 0; font-size: 13px; }
th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #f0f1f4; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.long { max-width: 720px; overflow-wrap: anywhere; }
p.note { color: #7a4b00; background: #fff6e0; border-left: 3px solid #e0a800; padding: 4px 10px; }
code { background: #f0f1f4; padding: 0 3px; border-radius: 3px; }
"""


@dataclass(frozen=True)
class Image:
    """A figure: PNG bytes, the text a screen reader (or a broken image) shows, and a caption."""

    png: bytes
    alt: str
    caption: str = ""


@dataclass(frozen=True)
class Table:
    """A table; ``rows`` hold text (escaped here) or numbers (right-aligned, thousands separated)."""

    table_id: str
    header: Sequence[str]
    rows: Sequence[Sequence[str | int | float]]
    caption: str = ""


@dataclass(frozen=True)
class Note:
    """A sentence in a highlighted box: what was left out, and why."""

    text: str


@dataclass(frozen=True)
class Paragraph:
    text: str


@dataclass(frozen=True)
class Heading:
    text: str


Block = Image | Table | Note | Paragraph | Heading


@dataclass
class Section:
    section_id: str
    title: str
    blocks: list[Block] = field(default_factory=list)


def _cell(value: str | int | float) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        text = html.escape(str(value))
        return f'<td class="long">{text}</td>' if len(text) > 60 else f"<td>{text}</td>"
    shown = f"{value:,}" if isinstance(value, int) else f"{value:.4g}"
    return f'<td class="num">{shown}</td>'


def _table(table: Table) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in table.header)
    body = "".join("<tr>" + "".join(_cell(v) for v in row) + "</tr>" for row in table.rows)
    caption = f"<caption>{html.escape(table.caption)}</caption>" if table.caption else ""
    table_id = html.escape(table.table_id)
    return f'<table id="{table_id}">{caption}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _image(image: Image) -> str:
    data = base64.b64encode(image.png).decode("ascii")
    caption = f"<figcaption>{html.escape(image.caption)}</figcaption>" if image.caption else ""
    return f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(image.alt)}">{caption}</figure>'


def _block(block: Block) -> str:
    if isinstance(block, Image):
        return _image(block)
    if isinstance(block, Table):
        return _table(block)
    if isinstance(block, Note):
        return f'<p class="note">{html.escape(block.text)}</p>'
    if isinstance(block, Heading):
        return f"<h3>{html.escape(block.text)}</h3>"
    return f"<p>{html.escape(block.text)}</p>"


def render_page(title: str, subtitle: Sequence[str], sections: Sequence[Section]) -> str:
    """The whole page as text (UTF-8 declared)."""
    nav = "".join(f'<a href="#{html.escape(s.section_id)}">{html.escape(s.title)}</a>' for s in sections)
    body = "".join(
        f'<section id="{html.escape(s.section_id)}"><h2>{html.escape(s.title)}</h2>'
        + "".join(_block(b) for b in s.blocks)
        + "</section>"
        for s in sections
    )
    lines = "".join(f"<p>{html.escape(line)}</p>" for line in subtitle)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head>"
        f"<body><header><h1>{html.escape(title)}</h1>{lines}</header><nav>{nav}</nav>"
        f"<main>{body}</main></body></html>\n"
    )


def count_images(sections: Sequence[Section]) -> int:
    return sum(isinstance(b, Image) for s in sections for b in s.blocks)
