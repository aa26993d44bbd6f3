"""The rehearsal's report: one HTML page, a verdict a person can check at a glance.

At the top the verdict, the score and each group's score; then one row per metric with its
classification, and its baseline and canary values over time beside their distributions
(matplotlib, embedded as PNG so the page is one file to attach to a ticket).
"""

from __future__ import annotations

import base64
import html
import io
import json
from collections.abc import Sequence
from pathlib import Path

from pipeline.rehearse.judge import HIGH, LOW, NODATA_FAIL, PASS, Classification, Verdict

_COLOURS = {PASS: "#1a7f37", HIGH: "#cf222e", LOW: "#cf222e", NODATA_FAIL: "#cf222e"}
_VERDICT_COLOURS = {"pass": "#1a7f37", "marginal": "#9a6700", "fail": "#cf222e"}


def _figure(metric: Classification, step_s: int) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (series, spread) = plt.subplots(1, 2, figsize=(9, 2.6),
                                         gridspec_kw={"width_ratios": [3, 1]})
    for values, label, colour in ((metric.control, "baseline", "#0969da"),
                                  (metric.experiment, "canary", "#bf3989")):
        if values:
            series.plot([i * step_s for i in range(len(values))], values, label=label,
                        color=colour, linewidth=1)
    series.set_xlabel("seconds into the judged window")
    series.set_title(metric.name, fontsize=10, loc="left")
    series.legend(fontsize=8, loc="upper right")
    data = [list(v) for v in (metric.control, metric.experiment) if v]
    if data:
        spread.boxplot(data, tick_labels=["baseline", "canary"][: len(data)]
                       if len(data) == 2 else ["baseline" if metric.control else "canary"])
    spread.set_title("distribution", fontsize=10, loc="left")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=80)
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode()


def mean_text(values: Sequence[float]) -> str:
    """A side's mean for people: four significant digits, `-` without data."""
    return f"{sum(values) / len(values):.4g}" if values else "-"


def write_report(path: Path, verdict: Verdict, *, title: str, step_s: int,
                 notes: Sequence[str] = ()) -> Path:
    rows = []
    for m in verdict.metrics:
        colour = _COLOURS.get(m.classification, "#57606a")
        ratio = "-" if m.effect_size is None else f"{m.effect_size:.3f}"
        picture = _figure(m, step_s)
        rows.append(
            f"<tr><td>{html.escape(m.name)}</td><td>{html.escape(m.group)}</td>"
            f"<td style='color:{colour};font-weight:bold'>{m.classification}"
            f"{' (critical)' if m.failed_critically else ''}</td>"
            f"<td>{'yes' if m.critical else ''}</td><td>{mean_text(m.control)}</td>"
            f"<td>{mean_text(m.experiment)}</td><td>{ratio}</td>"
            f"<td>{len(m.control)} / {len(m.experiment)}</td>"
            f"<td>{html.escape(m.reason)}</td></tr>"
            f"<tr><td colspan='9'><img alt='{html.escape(m.name)}' "
            f"src='data:image/png;base64,{picture}'></td></tr>"
        )
    groups = ", ".join(f"{g} {s:g}" for g, s in verdict.groups.items())
    colour = _VERDICT_COLOURS[verdict.verdict]
    note_items = "".join(f"<li>{html.escape(n)}</li>" for n in notes)
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em;max-width:1100px}}
table{{border-collapse:collapse}}td,th{{padding:4px 8px;border-bottom:1px solid #d0d7de;
text-align:left;vertical-align:top;font-size:14px}}</style></head><body>
<h1>{html.escape(title)}</h1>
<p style="font-size:20px">verdict <b style="color:{colour}">{verdict.verdict.upper()}</b>,
score <b>{verdict.score:g}</b> ({html.escape(verdict.reason)}); groups: {html.escape(groups)}</p>
<ul>{note_items}</ul>
<table><tr><th>metric</th><th>group</th><th>classification</th><th>critical</th>
<th>baseline mean</th><th>canary mean</th><th>ratio</th><th>points</th><th>why</th></tr>
{''.join(rows)}</table>
<details><summary>the verdict as JSON</summary><pre>{html.escape(
        json.dumps(verdict.as_json(), indent=2))}</pre></details>
</body></html>
"""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page)
    return path
