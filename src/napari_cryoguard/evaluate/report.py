"""Reports: one small document model rendered to Markdown and to self-contained HTML.

A :class:`Report` is a list of blocks (headings, paragraphs, tables, bullet lists,
images). :meth:`Report.write` renders ``report.md`` (images linked as relative PNG
paths) and ``report.html`` (the same content, images embedded as base64 PNG, so the one
file opens anywhere in a browser). Plots are drawn with matplotlib's Agg canvas
directly (``matplotlib.figure.Figure``), never through pyplot, so nothing here touches
the backend of a running napari session. Every file goes through
:func:`napari_cryoguard._atomic.atomic_output`.
"""

from __future__ import annotations

import base64
import html
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from napari_cryoguard._atomic import atomic_output

__all__ = [
    "Report",
    "fmt",
    "plot_bars",
    "plot_confusion",
    "plot_curves",
    "plot_histograms",
    "write_json",
]


def fmt(value: Any, digits: int = 3) -> str:
    """A table cell: numbers rounded, NaN/None as an em dash, bools as yes/no."""
    if value is None:
        return "—"
    if isinstance(value, bool | np.bool_):
        return "yes" if value else "no"
    if isinstance(value, int | np.integer):
        return str(int(value))
    if isinstance(value, float | np.floating):
        v = float(value)
        if not math.isfinite(v):
            return "—"
        if v != 0 and (abs(v) < 10 ** (-digits) or abs(v) >= 1e5):
            return f"{v:.{digits}g}"
        return f"{v:.{digits}f}"
    return str(value)


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write strict JSON (NaN -> null) atomically."""
    from napari_cryoguard.evaluate.metrics import json_clean

    path = Path(path)
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(json_clean(obj), indent=1, allow_nan=False) + "\n")
    return path


@dataclass
class Report:
    """A document: title plus blocks ``(kind, payload)``; see the module docstring."""

    title: str
    blocks: list[tuple[str, Any]] = field(default_factory=list)

    def heading(self, text: str, level: int = 2) -> None:
        self.blocks.append(("h", (int(level), str(text))))

    def paragraph(self, text: str) -> None:
        self.blocks.append(("p", str(text)))

    def bullets(self, items: Sequence[str]) -> None:
        self.blocks.append(("ul", [str(i) for i in items]))

    def table(
        self, header: Sequence[str], rows: Sequence[Sequence[Any]], caption: str = ""
    ) -> None:
        self.blocks.append(
            ("table", ([str(h) for h in header], [[fmt(c) for c in r] for r in rows], caption))
        )

    def image(self, path: str | os.PathLike, caption: str = "") -> None:
        self.blocks.append(("img", (Path(path), str(caption))))

    # ---------------------------------------------------------------- rendering
    def to_markdown(self, base: Path) -> str:
        out = [f"# {self.title}", ""]
        for kind, payload in self.blocks:
            if kind == "h":
                level, text = payload
                out += [f"{'#' * min(level, 6)} {text}", ""]
            elif kind == "p":
                out += [payload, ""]
            elif kind == "ul":
                out += [f"- {i}" for i in payload] + [""]
            elif kind == "table":
                header, rows, caption = payload
                if caption:
                    out += [f"*{caption}*", ""]
                esc = [h.replace("|", "\\|") for h in header]
                out.append("| " + " | ".join(esc) + " |")
                out.append("|" + "|".join("---" for _ in header) + "|")
                for r in rows:
                    out.append("| " + " | ".join(c.replace("|", "\\|") for c in r) + " |")
                out.append("")
            elif kind == "img":
                path, caption = payload
                rel = os.path.relpath(path, base).replace(os.sep, "/")
                out += [f"![{caption}]({rel})", ""]
                if caption:
                    out += [f"*{caption}*", ""]
        return "\n".join(out)

    def to_html(self, base: Path) -> str:
        e = html.escape
        parts = [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8">',
            f"<title>{e(self.title)}</title>",
            "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;"
            "color:#222}table{border-collapse:collapse;margin:.5em 0 1.5em}"
            "th,td{border:1px solid #bbb;padding:3px 8px;text-align:right}"
            "th{background:#eee}td:first-child,th:first-child{text-align:left}"
            "img{max-width:100%;border:1px solid #ddd}figure{margin:1em 0}"
            "figcaption{font-style:italic;color:#555}caption{text-align:left;"
            "font-style:italic;padding:2px 0}</style></head><body>",
            f"<h1>{e(self.title)}</h1>",
        ]
        for kind, payload in self.blocks:
            if kind == "h":
                level, text = payload
                lv = min(max(level, 2), 6)
                parts.append(f"<h{lv}>{e(text)}</h{lv}>")
            elif kind == "p":
                parts.append(f"<p>{e(payload)}</p>")
            elif kind == "ul":
                parts.append("<ul>" + "".join(f"<li>{e(i)}</li>" for i in payload) + "</ul>")
            elif kind == "table":
                header, rows, caption = payload
                t = ["<table>"]
                if caption:
                    t.append(f"<caption>{e(caption)}</caption>")
                t.append("<tr>" + "".join(f"<th>{e(h)}</th>" for h in header) + "</tr>")
                for r in rows:
                    t.append("<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>")
                t.append("</table>")
                parts.append("".join(t))
            elif kind == "img":
                path, caption = payload
                try:
                    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
                    src = f"data:image/png;base64,{data}"
                except OSError:
                    src = os.path.relpath(path, base).replace(os.sep, "/")
                parts.append(
                    f'<figure><img src="{src}" alt="{e(caption)}">'
                    f"<figcaption>{e(caption)}</figcaption></figure>"
                )
        parts.append("</body></html>")
        return "\n".join(parts)

    def write(self, out: str | os.PathLike, stem: str = "report") -> tuple[Path, Path]:
        """Write ``<out>/<stem>.md`` and ``<out>/<stem>.html``; returns both paths."""
        out = Path(out)
        md, ht = out / f"{stem}.md", out / f"{stem}.html"
        with atomic_output(md) as tmp:
            tmp.write_text(self.to_markdown(out), encoding="utf-8")
        with atomic_output(ht) as tmp:
            tmp.write_text(self.to_html(out), encoding="utf-8")
        return md, ht


# --------------------------------------------------------------------------- plots
def _figure(width: float = 6.0, height: float = 4.0):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: str | os.PathLike) -> Path:
    path = Path(path)
    fig.tight_layout()
    with atomic_output(path) as tmp, open(tmp, "wb") as fh:
        fig.savefig(fh, format="png")
    return path


def plot_curves(
    path: str | os.PathLike,
    curves: dict[str, tuple[Sequence[float], Sequence[float]]],
    *,
    title: str,
    xlabel: str,
    ylabel: str = "accuracy",
    ylim: tuple[float, float] | None = (0.0, 1.02),
    logx: bool = False,
    chance: float | None = None,
) -> Path:
    """Line plot, one line (with markers) per entry of ``curves``: ``{label: (x, y)}``."""
    fig = _figure()
    ax = fig.add_subplot(111)
    for label, (x, y) in curves.items():
        ax.plot(list(x), [np.nan if v is None else v for v in y], marker="o", label=str(label))
    if chance is not None:
        ax.axhline(chance, color="grey", linestyle=":", label="chance")
    if logx:
        ax.set_xscale("symlog", linthresh=1e-3)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if ylim is not None:
        ax.set_ylim(*ylim)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_confusion(
    path: str | os.PathLike, cm: Any, class_names: Sequence[str], *, title: str
) -> Path:
    """Confusion matrix heat map (rows true, columns predicted) with the counts written in."""
    cm = np.asarray(cm)
    k = len(class_names)
    fig = _figure(max(4.0, 0.6 * k + 2.5), max(3.5, 0.6 * k + 2.0))
    ax = fig.add_subplot(111)
    im = ax.imshow(cm, cmap="Blues")
    fig.colorbar(im, ax=ax, label="samples")
    ax.set_xticks(range(k))
    ax.set_yticks(range(k))
    ax.set_xticklabels(class_names, rotation=45, ha="right", fontsize=8)
    ax.set_yticklabels(class_names, fontsize=8)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title)
    top = cm.max() if cm.size else 0
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(
                j,
                i,
                str(int(cm[i, j])),
                ha="center",
                va="center",
                fontsize=8,
                color="white" if top and cm[i, j] > top / 2 else "black",
            )
    return _save(fig, path)


def plot_histograms(
    path: str | os.PathLike,
    data: dict[str, Sequence[float]],
    *,
    title: str,
    xlabel: str,
    bins: int = 20,
) -> Path:
    """Overlaid step histograms, one per entry of ``data``."""
    fig = _figure()
    ax = fig.add_subplot(111)
    arrays = {k: np.asarray(v, dtype=float) for k, v in data.items()}
    arrays = {k: v[np.isfinite(v)] for k, v in arrays.items()}
    hi = max((float(v.max()) for v in arrays.values() if v.size), default=1.0)
    edges = np.linspace(0.0, hi if hi > 0 else 1.0, bins + 1)
    for label, v in arrays.items():
        if v.size:
            ax.hist(v, bins=edges, histtype="step", linewidth=1.5, label=f"{label} (n={v.size})")
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("samples")
    ax.grid(True, alpha=0.3)
    if arrays:
        ax.legend(fontsize=8)
    return _save(fig, path)


def plot_bars(
    path: str | os.PathLike,
    groups: Sequence[str],
    series: dict[str, Sequence[float]],
    *,
    title: str,
    ylabel: str,
    ylim: tuple[float, float] | None = (0.0, 1.02),
) -> Path:
    """Grouped bar chart: one group per entry of ``groups``, one bar per series."""
    fig = _figure(max(6.0, 0.9 * len(groups) + 3), 4.0)
    ax = fig.add_subplot(111)
    k = max(len(series), 1)
    width = 0.8 / k
    x = np.arange(len(groups))
    for i, (label, vals) in enumerate(series.items()):
        v = [np.nan if a is None else float(a) for a in vals]
        ax.bar(x + (i - (k - 1) / 2) * width, v, width, label=str(label))
    ax.set_xticks(x)
    ax.set_xticklabels(groups, rotation=20, ha="right", fontsize=8)
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    if ylim is not None:
        ax.set_ylim(*ylim)
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)
