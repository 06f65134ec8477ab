"""DPA figure: the reward-space front of every iteration, the direction control and the length per direction.

    python plot/plot_dpa_front.py --run_dir=runs/dpa --output_prefix=results/fig_dpa_front \
        [--points_file=results/bench_dpa.json]

Reads {run_dir}/dpa_config.json (objectives and their prompt names) and {run_dir}/eval/iter{t}.json (held-out
prompts × the θ grid, written by trainDPA.py evaluate; iteration 0 is the starting model). Three panels:
(a) mean of objective 1 vs objective 2 per direction, one line per iteration (the starting model's point at
θ = 0 marked), plus labelled extra points from --points_file (its "points": [{"label", "x", "y"}], e.g.
MAP-D and the palette-conditioned model, as bench_dpa.py writes); (b) the realized ratio mean r_2/mean r_1
against θ with each iteration's Spearman correlation in the legend; (c) mean response length (words) per θ.
Writes PDF and PNG.
"""
import json
import os


from mapalign.plots import figstyle  # noqa: E402  (headless backend first)
from mapalign.errors import NotFoundError  # noqa: E402
from mapalign import dpatrainer  # noqa: E402
from mapalign import records  # noqa: E402

plt = figstyle.plt


def load_run(run_dir):
    """(values, names, {iteration: front points}) of a trainDPA run folder."""
    path = os.path.join(run_dir, dpatrainer.CONFIG_FILE)
    if not os.path.isfile(path):
        raise NotFoundError(f"{run_dir!r} is not a trainDPA run folder (no {dpatrainer.CONFIG_FILE})")
    with open(path, encoding="utf-8") as f:
        config = json.load(f)["config"]
    fronts, t = {}, 0
    while os.path.isfile(os.path.join(run_dir, "eval", f"iter{t}.json")):
        recs = records.load_records(os.path.join(run_dir, "eval", f"iter{t}.json"))
        fronts[t] = dpatrainer.front(recs, config["values"])
        t += 1
    if not fronts:
        raise NotFoundError(f"{run_dir!r} has no eval/iter0.json; run python trainDPA.py ... evaluate first")
    return config["values"], config["names"], fronts


def plot_front(run_dir, output_prefix="results/fig_dpa_front", points_file=None):
    """Draw the three panels (module docstring); returns the written paths."""
    values, names, fronts = load_run(run_dir)
    extra = []
    if points_file:
        with open(points_file, encoding="utf-8") as f:
            extra = json.load(f).get("points", [])
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    colors = plt.cm.viridis([i / max(1, len(fronts) - 1) * 0.85 for i in range(len(fronts))])
    for (t, points), color in zip(sorted(fronts.items()), colors):
        label = "start model" if t == 0 else f"iteration {t}"
        xs = [p["mean"][values[0]] for p in points]
        ys = [p["mean"][values[1]] for p in points]
        axes[0].plot(xs, ys, "-o", color=color, ms=4, label=label)
        for p, x, y in zip(points, xs, ys):
            if p["angle"] in (min(q["angle"] for q in points), max(q["angle"] for q in points)):
                axes[0].annotate(f"{p['angle']:+.0f}°", (x, y), fontsize=7, color=color,
                                 textcoords="offset points", xytext=(3, 3))
        control = dpatrainer.direction_control(points, values)
        ratio = [y / x if x > 0 else float("nan") for x, y in zip(xs, ys)]
        axes[1].plot([p["angle"] for p in points], ratio, "-o", color=color, ms=4,
                     label=f"{label} (Spearman {control['spearman_ratio']:.2f})")
        axes[2].plot([p["angle"] for p in points], [p["words"] for p in points], "-o", color=color, ms=4, label=label)
    markers = iter("s^vDPX*")
    for point in extra:
        axes[0].scatter([point["x"]], [point["y"]], marker=next(markers, "o"), s=40, zorder=5,
                        label=figstyle.text(point["label"]))
    axes[0].set_xlabel(figstyle.text(f"{names[0]} (mean)"))
    axes[0].set_ylabel(figstyle.text(f"{names[1]} (mean)"))
    axes[0].set_title(figstyle.text("front per iteration (held-out prompts)"), fontsize=10)
    axes[1].set_xlabel(figstyle.text("direction $\\theta$ (degrees)"))
    axes[1].set_ylabel(figstyle.text(f"realized {names[1]} / {names[0]}"))
    axes[1].set_title(figstyle.text("direction control"), fontsize=10)
    axes[2].set_xlabel(figstyle.text("direction $\\theta$ (degrees)"))
    axes[2].set_ylabel("mean length (words)")
    axes[2].set_title("length per direction", fontsize=10)
    for ax in axes:
        ax.legend(fontsize=7)
    fig.tight_layout()
    return figstyle.save_figure(fig, output_prefix, dpi=80)
