"""Self-contained HTML pages: pictures and audio are embedded, so a report opens anywhere
(a browser, the MLflow artifact view, an e-mail) without the files next to it."""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Iterable
from typing import Any

import numpy as np
import pandas as pd
import soundfile as sf

STYLE = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222}
h1{font-size:1.6em}h2{font-size:1.25em;margin-top:1.8em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.6em 0;font-size:.92em}
td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}
.figs img{max-width:48%;margin:.5%;border:1px solid #eee}
.note{color:#555;font-size:.9em}
.warn{background:#fff4e5;border-left:4px solid #e08a00;padding:.5em .8em}
.lead{background:#eef7ee;border-left:4px solid #2a8a2a;padding:.5em .8em}
.bad{color:#a00}.good{color:#070}
audio{height:2em;vertical-align:middle}
"""


def figure_uri(fig: Any) -> str:
    """A matplotlib figure, laid out tight, as a PNG data URI (the figure is closed)."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def audio_uri(samples: np.ndarray, rate: int) -> str:
    """Mono float audio as a 16-bit WAV data URI."""
    buf = io.BytesIO()
    sf.write(buf, np.clip(samples, -1, 1), rate, format="WAV", subtype="PCM_16")
    return "data:audio/wav;base64," + base64.b64encode(buf.getvalue()).decode()


def audio_tag(samples: np.ndarray, rate: int) -> str:
    return f'<audio controls preload="none" src="{audio_uri(samples, rate)}"></audio>'


def table(frame: pd.DataFrame, raw_columns: Iterable[str] = ()) -> str:
    """An HTML table; columns in ``raw_columns`` hold markup (audio players) left unescaped."""
    raw = set(raw_columns)
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
    rows = []
    for rec in frame.itertuples(index=False):
        cells = []
        for col, value in zip(frame.columns, rec, strict=True):
            text = str(value) if col in raw else html.escape(_fmt(value))
            cells.append(f"<td>{text}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>"


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return "" if np.isnan(value) else f"{value:.4g}"
    return str(value)


def page(title: str, sections: list[tuple[str, str]], intro: str = "") -> str:
    body = "".join(f"<h2>{html.escape(h)}</h2>{content}" for h, content in sections)
    return (
        f'<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>{intro}{body}"
        "</body></html>"
    )
