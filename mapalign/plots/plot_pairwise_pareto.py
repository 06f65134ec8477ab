"""Trade-offs between values (paper Fig. 1): realized levels of randomly aligned models, pair by pair.

    python rewardProcessor.py --file_path=results/llama2_chat-Anthropic-harmless.json \
        --values_to_align=humor,gpt2-helpful,gpt2-harmless --values_to_evaluate=humor,gpt2-helpful,gpt2-harmless \
        assess_postalignment_multivalue --k=500 --scaling=-1 --scaling_MAX=4
    python plot/plot_pairwise_pareto.py plot_pareto \
        --csv_path=results/llama2_chat-Anthropic-harmless_pareto-1_randLam_val=humor,gpt2-helpful,gpt2-harmless_numericC-levels.csv \
        --points_file=results/figures/data/points_pareto.json
    python plot/plot_pairwise_pareto.py plot_matrix_scatterplot --csv_path=<any CSV>

Each command writes a PDF and a PNG and returns their paths.
"""
import itertools
import os


import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from mapalign.plots import figstyle  # noqa: E402  (selects the headless backend before pyplot is used)
from mapalign.plots import artefacts  # noqa: E402
from mapalign import evaluation  # noqa: E402
from mapalign import records  # noqa: E402

plt = figstyle.plt

_SUFFIX = "_numericC-levels.csv"


def _csv_stem(path):
    for suffix in (_SUFFIX, ".csv"):
        if path.endswith(suffix):
            return path[:-len(suffix)]
    return path


def plot_matrix_scatterplot(csv_path, columns=None, bins=20, output_prefix=None):
    """Pair plot of a CSV's numeric columns: histograms on the diagonal, scatters off it.

    csv_path: any CSV (e.g. a random-λ `_numericC-levels.csv`). columns: the columns to show
    (comma-separated; default every numeric column, `_lam` columns included). bins: histogram bins.
    output_prefix: default `{csv without .csv}_matrix`.
    """
    frame = artefacts.read_levels_csv(csv_path)
    numeric = [c for c in frame.columns if pd.api.types.is_numeric_dtype(frame[c])]
    names = artefacts.as_list(columns, "columns") if columns is not None else numeric
    data = artefacts.csv_columns(frame, names, csv_path)
    if not np.all(np.isfinite(data)):
        raise artefacts.ArtefactError(f"{csv_path!r}: columns {names} hold non-numeric or missing entries.")
    if len(names) < 2:
        raise artefacts.ArtefactError(f"{csv_path!r}: a pair plot needs at least 2 numeric columns; got {names}.")
    k = len(names)
    fig, axes = plt.subplots(k, k, figsize=(1.9 * k + 0.6, 1.9 * k + 0.6), squeeze=False)
    labels = [figstyle.lambda_label(n[:-4]) if n.endswith("_lam") else figstyle.value_label(n) for n in names]
    for i, j in itertools.product(range(k), range(k)):
        ax = axes[i, j]
        if i == j:
            ax.hist(data[:, i], bins=bins, color="tab:blue", alpha=0.8)
        else:
            ax.scatter(data[:, j], data[:, i], s=4, alpha=0.4, color="tab:blue", linewidths=0)
        ax.tick_params(labelsize=6)
        if i == k - 1:
            ax.set_xlabel(labels[j], fontsize=8)
        else:
            ax.set_xticklabels([])
        if j == 0:
            ax.set_ylabel(labels[i], fontsize=8)
        elif i != j:
            ax.set_yticklabels([])
    fig.suptitle(figstyle.text(f"{os.path.basename(csv_path)} ({data.shape[0]} rows)"), fontsize=8)
    fig.tight_layout()
    return figstyle.save_figure(fig, output_prefix or f"{_csv_stem(csv_path)}_matrix")


def _reference_file(csv_path, file_path, table):
    """The unaligned results file the CSV was computed from: --file_path, else the CSV's sidecar
    (written by assess_postalignment_multivalue), else the points table's reference."""
    sidecar = records.load_metadata(csv_path).get("file_path")
    file_path = file_path or sidecar or (table or {}).get("reference")
    if not file_path:
        raise artefacts.ArtefactError(f"{csv_path!r} has no sidecar naming its results file; pass --file_path "
                                      "(the unaligned results file its levels were computed from).")
    if table and table.get("reference") and os.path.normpath(table["reference"]) != os.path.normpath(file_path):
        raise artefacts.ArtefactError(f"the points table's reference {table['reference']!r} is not the CSV's results "
                                      f"file {file_path!r}; quantiles of both must come from the same file.")
    return file_path


def plot_pareto(csv_path, file_path=None, pairs=None, points_file=None, output_prefix=None):
    """Realized levels of randomly aligned models as quantiles of the original rewards, one panel
    per pair of values, with the points of a points table (e.g. Original, MAP, Sole-X) overlaid and
    arrows from the table's first point to the others.

    csv_path: a random-λ `_numericC-levels.csv` (assess_postalignment_multivalue without --lam).
    file_path: the unaligned results file (default: the CSV's sidecar); each level is converted to
    its quantile among that file's rewards (share strictly below), so axes run over [0, 1.04].
    pairs: "x:y,x:y" value pairs (x axis first); default every pair of the CSV's aligned values
    (its `{value}_lam` columns). points_file: optional points table (plot/artefacts.py format; its
    reference must be file_path). output_prefix: default `{csv stem}_pareto`.
    """
    frame = artefacts.read_levels_csv(csv_path)
    table = artefacts.load_points(points_file) if points_file else None
    file_path = _reference_file(csv_path, file_path, table)
    if pairs is None:
        aligned = [c[:-4] for c in frame.columns if c.endswith("_lam") and c[:-4] in frame.columns]
        pair_list = list(itertools.combinations(aligned, 2))
    else:
        pair_list = []
        for item in artefacts.as_list(pairs, "pairs"):
            parts = item.split(":")
            if len(parts) != 2:
                raise artefacts.ArtefactError(f"--pairs items are x:y value pairs (e.g. gpt2-harmless:gpt2-helpful); "
                                              f"got {item!r}.")
            pair_list.append(tuple(parts))
    if not pair_list:
        raise artefacts.ArtefactError(f"{csv_path!r} has fewer than two aligned values (`*_lam` columns with a level "
                                      "column); pass --pairs=x:y.")
    shown = list(dict.fromkeys(v for pair in pair_list for v in pair))
    levels = artefacts.csv_columns(frame, shown, csv_path)
    reference = artefacts.load_rewards(file_path, shown)
    quantiles = evaluation.quantile_transform(reference, levels)
    if table:
        labels, point_levels = artefacts.table_levels(table, shown)
        point_q = evaluation.quantile_transform(reference, point_levels)

    fig, axes = plt.subplots(1, len(pair_list), figsize=(4.2 * len(pair_list), 4.0), squeeze=False)
    markers = itertools.cycle(["o", "*", "s", "D", "^", "v", "P", "X"])
    colors = itertools.cycle(["black", "tab:red", "tab:green", "tab:orange", "tab:purple", "tab:brown"])
    styles = [(next(markers), next(colors)) for _ in range(len(table["points"]) if table else 0)]
    for ax, (x, y) in zip(axes[0], pair_list):
        ix, iy = shown.index(x), shown.index(y)
        ax.scatter(quantiles[:, ix], quantiles[:, iy], s=8, alpha=0.35, color="tab:blue", linewidths=0,
                   label="randomly aligned")
        if table:
            for p, (label, (marker, color)) in enumerate(zip(labels, styles)):
                if p > 0:
                    ax.annotate("", xy=(point_q[p, ix], point_q[p, iy]), xytext=(point_q[0, ix], point_q[0, iy]),
                                arrowprops=dict(arrowstyle="->", color=color, lw=1, alpha=0.8))
                ax.scatter(point_q[p, ix], point_q[p, iy], marker=marker, s=90 if marker == "*" else 45,
                           color=color, zorder=3, label=figstyle.text(label))
        ax.set_xlim(0, 1.04)
        ax.set_ylim(0, 1.04)
        ax.set_xlabel(figstyle.value_label(x) + " (quantile)")
        ax.set_ylabel(figstyle.value_label(y) + " (quantile)")
        ax.grid(alpha=0.3)
    axes[0, 0].legend(frameon=False, fontsize=7, loc="lower left")
    fig.suptitle(figstyle.text(f"{os.path.basename(file_path)}: {len(quantiles)} random $\\lambda$"), fontsize=9)
    fig.tight_layout()
    return figstyle.save_figure(fig, output_prefix or f"{_csv_stem(csv_path)}_pareto")
