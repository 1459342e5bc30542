"""Draws the module panel from the state play_clinician_path.py recorded (Extension Index picture).

usage: python render_panel.py RESULT_JSON OUT_PNG [TASK]

The picture is a schematic render of the panel's real contents after a real run on the stand-in
(texts, table, progress), labelled as such on the image: it is not a screenshot of Slicer.
"""

import html
import json
import sys
import textwrap

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyBboxPatch, Rectangle  # noqa: E402

ROW = 0.028


def render(panel, out):
    fig = plt.figure(figsize=(4.6, 8.4), dpi=110)
    ax = fig.add_axes([0, 0, 1, 1])
    ax.set_axis_off()
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.add_patch(Rectangle((0, 0.955), 1, 0.045, color="#7a1f1f"))
    ax.text(0.5, 0.977, "Module panel rendered from a test run on the Slicer stand-in\n(not a Slicer screenshot)",
            ha="center", va="center", color="white", fontsize=7.5, weight="bold")
    y = [0.935]

    def section(title):
        y[0] -= 0.012
        ax.add_patch(Rectangle((0.03, y[0] - 0.006), 0.94, 0.026, color="#d9dee6"))
        ax.text(0.05, y[0] + 0.007, "▾ " + title, fontsize=8, weight="bold", va="center")
        y[0] -= ROW

    def line(left, right="", bold=False, color="black"):
        ax.text(0.06, y[0], left, fontsize=7, va="center", weight="bold" if bold else "normal")
        if right:
            ax.add_patch(FancyBboxPatch((0.36, y[0] - 0.010), 0.58, 0.020, boxstyle="round,pad=0.002",
                                        fc="white", ec="#9aa3ad", lw=0.6))
            ax.text(0.38, y[0], right[:48], fontsize=7, va="center", color=color)
        y[0] -= ROW

    section("Inputs")
    line("Task:", panel["task"])
    for label, name in panel["inputs"]:
        line(label, name)
    section("Model")
    line("Model:", panel["model"])
    for text in [t.strip() for t in html.unescape(panel["model_card"]).splitlines() if t.strip()][:7]:
        for part in textwrap.wrap(" ".join(text.split()), 62)[:2]:
            ax.text(0.06, y[0], part, fontsize=6, va="center", color="#333333")
            y[0] -= ROW * 0.7
    line("Preset:", panel["preset"])
    section("Output")
    ax.add_patch(FancyBboxPatch((0.06, y[0] - 0.014), 0.88, 0.028, boxstyle="round,pad=0.003", fc="#e9edf2",
                                ec="#6b7785", lw=0.8))
    ax.text(0.5, y[0], "Segment", ha="center", va="center", fontsize=8, weight="bold")
    y[0] -= ROW * 1.2
    line(panel["status"][:60])
    value, fmt = panel["progress"]
    ax.add_patch(Rectangle((0.06, y[0] - 0.008), 0.88, 0.016, fc="white", ec="#9aa3ad", lw=0.6))
    ax.add_patch(Rectangle((0.06, y[0] - 0.008), 0.88 * value / 100, 0.016, fc="#3d8b3d"))
    ax.text(0.5, y[0], fmt, ha="center", va="center", fontsize=6.5, color="white", weight="bold")
    y[0] -= ROW
    section("Results")
    for part in textwrap.wrap(panel["summary"], 70)[:3]:
        ax.text(0.06, y[0], part, fontsize=6.5, va="center")
        y[0] -= ROW * 0.75
    headers = ["Segment", "Volume (mL)", "Lesions"]
    for row in [headers, *panel["table"]]:
        for x, cell in zip((0.06, 0.55, 0.78), row):
            ax.text(x, y[0], str(cell)[:30], fontsize=6.5, va="center", weight="bold" if row is headers else "normal")
        y[0] -= ROW * 0.8
    section("NMF component browser")
    line("Layer:", panel["component_layer"])
    k, maximum = panel["component"]
    line("Component:", f"{int(k)}  (0 … {int(maximum)})")
    fig.savefig(out)


if __name__ == "__main__":
    result = json.load(open(sys.argv[1], encoding="utf-8"))
    task = sys.argv[3] if len(sys.argv) > 3 else "tumor"
    render(next(run["panel"] for run in result["runs"] if run["task"] == task), sys.argv[2])
