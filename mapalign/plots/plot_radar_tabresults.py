"""Radar chart of realized levels, as quantiles of the unaligned model's rewards (paper Fig. radar).

    python plot/plot_radar_tabresults.py --points_file=results/figures/data/points_palettes.json

The points table (format in plot/artefacts.py) names the reference results file and the runs to
compare: the reference itself, MAP λ (realized levels of its tilted samples), other results files
(MAP-D, PPO outputs), rows of levels CSVs, or levels typed in. Writes a PDF and a PNG.
"""
import os


import numpy as np  # noqa: E402

from mapalign.plots import figstyle  # noqa: E402  (selects the headless backend before pyplot is used)
from mapalign.plots import artefacts  # noqa: E402
from mapalign import evaluation  # noqa: E402
from mapalign import records  # noqa: E402

plt = figstyle.plt


def plot_radar(points_file, value_list=None, rmax=None, title=None, output_prefix=None):
    """One closed polygon per point of a points table, one axis per value; radius = the realized
    level's quantile among the reference file's rewards (share strictly below, in [0, 1]).

    points_file: points table JSON with a "reference" results file. value_list: axes (comma-separated;
    default the table's "values", else the reference's reward keys); at least 3. rmax: outer radius
    (default the largest quantile rounded up to 0.1, at most 1). title: figure title (default the
    table's "title", else its file name). output_prefix: default `{points_file without .json}_radar`.
    """
    table = artefacts.load_points(points_file)
    if not table.get("reference"):
        raise artefacts.ArtefactError(f"points table {points_file!r} names no \"reference\" results file; the radar "
                                      "draws quantiles of its rewards.")
    names = artefacts.as_list(value_list, "value_list") if value_list is not None else artefacts.table_values(table)
    if len(names) < 3:
        raise artefacts.ArtefactError(f"a radar needs at least 3 values; got {names}. Use plot_pairwise_pareto for 2.")
    labels, levels = artefacts.table_levels(table, names)
    quantiles = evaluation.quantile_transform(artefacts.load_rewards(table["reference"], names), levels)
    if rmax is None:
        rmax = min(1.0, np.ceil(quantiles.max() * 10 + 1e-9) / 10)
    rmax = float(rmax)
    if not 0 < rmax <= 1:
        raise artefacts.ArtefactError(f"--rmax is a quantile in (0, 1]; got {rmax}.")

    angles = np.linspace(0, 2 * np.pi, len(names), endpoint=False)
    closed = np.append(angles, angles[0])
    fig, ax = plt.subplots(figsize=(5.2, 5.2), subplot_kw={"projection": "polar"})
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (label, q) in enumerate(zip(labels, quantiles)):
        color = colors[i % len(colors)]
        ax.plot(closed, np.append(q, q[0]), color=color, lw=1.6, marker="o", ms=3, label=figstyle.text(label))
        ax.fill(closed, np.append(q, q[0]), color=color, alpha=0.08)
    ax.set_xticks(angles)
    ax.set_xticklabels([figstyle.value_label(v) for v in names], fontsize=9)
    ax.set_ylim(0, rmax)
    ax.set_yticks(np.linspace(0, rmax, 5)[1:])
    ax.set_yticklabels([f"{t:.2f}" for t in np.linspace(0, rmax, 5)[1:]])
    ax.set_rlabel_position(180.0 / len(names))  # radial ticks between the first two axes, clear of labels
    ax.tick_params(axis="y", labelsize=7)
    ax.set_title(figstyle.text(title or table.get("title") or os.path.basename(points_file)), fontsize=10, pad=18)
    ax.legend(frameon=False, fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.08), ncol=2)
    return figstyle.save_figure(fig, output_prefix or f"{records.file_stem(points_file)}_radar")
