"""A self-contained HTML report: tables and figures in one file to open in a browser.

Images are embedded as base64 ``data:`` URIs and the style sheet is inline, so the report
can be mailed or archived on its own. Every piece of text is escaped; nothing in it runs
(no scripts).
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from dynlearn.files import write_text_atomic

__all__ = ["Report"]

_CSS = """
body { font: 15px/1.5 -apple-system, "Segoe UI", Helvetica, Arial, sans-serif;
       max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; }
h2 { font-size: 1.2em; border-bottom: 1px solid #ddd; padding-bottom: 0.2em; margin-top: 2em; }
.meta { color: #666; font-size: 0.9em; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.92em; }
th, td { padding: 0.25em 0.8em; text-align: right; border-bottom: 1px solid #eee; }
th { border-bottom: 2px solid #ccc; }
th:first-child, td:first-child { text-align: left; }
pre, code { font: 0.88em/1.4 Menlo, Consolas, monospace; }
pre { background: #f7f7f7; padding: 0.8em; overflow-x: auto; font-size: 0.8em; }
figure { margin: 1em 0; }
figure img { max-width: 100%; height: auto; }
figcaption { color: #555; font-size: 0.9em; }
.ok { color: #08734a; } .bad { color: #b3261e; }
"""


#: CSS pixels per inch of a figure: 9-point figure type then matches the 15-pixel text
PIXELS_PER_INCH = 120


@dataclass
class Report:
    """An HTML report built section by section.

    Examples
    --------
    >>> r = Report("Fit of lynx-hare")
    >>> r.heading("Parameters")
    >>> r.paragraph("Fitted with a log-scale loss.")
    >>> "<h2>Parameters</h2>" in r.html()
    True
    """

    title: str
    subtitle: str = ""
    parts: list[str] = field(default_factory=list)

    def heading(self, text: str) -> None:
        self.parts.append(f"<h2>{html.escape(text)}</h2>")

    def paragraph(self, text: str, css_class: str | None = None) -> None:
        cls = f' class="{html.escape(css_class)}"' if css_class else ""
        self.parts.append(f"<p{cls}>{html.escape(text)}</p>")

    def preformatted(self, text: str) -> None:
        self.parts.append(f"<pre>{html.escape(text)}</pre>")

    def items(self, lines: Sequence[str], code: bool = False) -> None:
        wrap = (lambda s: f"<code>{html.escape(s)}</code>") if code else html.escape
        self.parts.append("<ul>" + "".join(f"<li>{wrap(x)}</li>" for x in lines) + "</ul>")

    def table(self, frame, float_format: str = "{:.6g}", index: bool = True) -> None:
        """A pandas DataFrame as an HTML table (values escaped)."""
        def fmt(v):
            if isinstance(v, float):
                return float_format.format(v)
            return str(v)
        cols = list(frame.columns)
        head = ("<th></th>" if index else "") + "".join(
            f"<th>{html.escape(str(c))}</th>" for c in cols)
        rows = []
        for idx, row in frame.iterrows():
            cells = "".join(f"<td>{html.escape(fmt(row[c]))}</td>" for c in cols)
            lead = f"<td>{html.escape(str(idx))}</td>" if index else ""
            rows.append(f"<tr>{lead}{cells}</tr>")
        self.parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}"
                          "</tbody></table>")

    def image(self, path, caption: str = "", alt: str = "", dpi: float | None = 200.0) -> None:
        """Embed an image file (PNG, SVG or JPEG) as a data URI.

        A PNG is shown at :data:`PIXELS_PER_INCH` per inch of the figure it was saved from
        at ``dpi`` (so every figure's type is the same size on the page, about that of the
        text, whatever the figure's size), never wider than the page; ``dpi=None``: at the
        page's width.
        """
        path = Path(path)
        raw = path.read_bytes()
        mime = {".png": "image/png", ".svg": "image/svg+xml", ".jpg": "image/jpeg",
                ".jpeg": "image/jpeg"}.get(path.suffix.lower(), "application/octet-stream")
        data = base64.b64encode(raw).decode("ascii")
        size = ""
        if dpi and mime == "image/png" and raw[:8] == b"\x89PNG\r\n\x1a\n" and len(raw) > 24:
            width = int.from_bytes(raw[16:20], "big")      # the IHDR chunk's width
            size = f' style="width: {round(width / dpi * PIXELS_PER_INCH)}px"'
        cap = f"<figcaption>{html.escape(caption)}</figcaption>" if caption else ""
        self.parts.append(f'<figure><img src="data:{mime};base64,{data}"{size} '
                          f'alt="{html.escape(alt or caption or path.stem)}">{cap}</figure>')

    def html(self) -> str:
        """The complete document."""
        from dynlearn.version import __version__
        stamp = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
        sub = f"<p class=\"meta\">{html.escape(self.subtitle)}</p>" if self.subtitle else ""
        return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
                "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
                f"<title>{html.escape(self.title)}</title>\n<style>{_CSS}</style>\n</head>\n"
                f"<body>\n<h1>{html.escape(self.title)}</h1>\n{sub}\n"
                + "\n".join(self.parts)
                + f"\n<p class=\"meta\">Generated by dynlearn {html.escape(__version__)} on "
                f"{stamp}.</p>\n</body>\n</html>\n")

    def write(self, path) -> None:
        """Write the report atomically."""
        write_text_atomic(path, self.html())
