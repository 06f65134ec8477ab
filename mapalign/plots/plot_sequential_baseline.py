"""The sequential baseline: aligning one value at a time (each value's λ optimised with the others
frozen, in turn) versus MAP's joint λ, at palettes taken from the model's own quantiles.

    python plot/plot_sequential_baseline.py compute_sequential_baseline \
        --file_path=results/opt1.3b-Anthropic-harmless.json --value_list=all --levels=50,60,70 --rounds=5
    python plot/plot_sequential_baseline.py plot_sequential_baseline \
        --results_json=results/opt1.3b-Anthropic-harmless_sequential_baseline.json

The paper's point (SPEC-MAP §12): after one sequential pass the earlier values are pulled back by
the later ones (OPT-1.3B, 70% palette: helpfulness reaches the 0.44 quantile instead of MAP's
0.70), and the sequential λ approach MAP's only after many rounds.

Palette of level q%: the `q%` row of the file's palette-mode level table (rewarding.level_table,
rounded to 3 decimals as the `_realC-levels.csv` the original read it from): max(mean, q-quantile)
for the values to improve, the mean for the maintained values (diversity, coherence, perplexity).

JSON written by compute_sequential_baseline ({file_prefix}.json):
    {"file_path", "values": [v...], "solver", "estimator", "rounds": R,
     "levels": [{"level": "70%", "c": [k], "c_quantiles": [k],
                 "MAP": {"status", "lam": [k] or null, "realized": [k] or null, "quantiles": [k] or null},
                 "sequential": [{"round": 1, "status", "lam", "realized", "quantiles"}, ... up to R]}]}
`status`: MAP's is the solver's ("feasible", "infeasible", "not_converged"); a sequential round's is
"feasible" when its λ reaches the palette (within the solver tolerance), "not_converged" when it
misses it, "failed" when a coordinate solve failed. Quantiles are the realized levels
as quantiles of the file's own rewards (share of samples strictly below). A failed step has nulls.
"""


import numpy as np  # noqa: E402

from mapalign.plots import figstyle  # noqa: E402  (selects the headless backend before pyplot is used)
from mapalign.plots import artefacts  # noqa: E402
from mapalign.align import AlignValues  # noqa: E402
from mapalign.errors import InputError  # noqa: E402
from mapalign import evaluation  # noqa: E402
from mapalign import records  # noqa: E402
from mapalign import rewarding  # noqa: E402

plt = figstyle.plt


def _level_name(level):
    text = str(level).strip()
    return text if text.endswith("%") else f"{float(text):g}%"


def _entry(status, lam, realized, rewards):
    if lam is None:
        return {"status": status, "lam": None, "realized": None, "quantiles": None}
    return {"status": status, "lam": [float(x) for x in lam], "realized": [float(x) for x in realized],
            "quantiles": [float(q) for q in evaluation.quantile_transform(rewards, realized)]}


def compute_sequential_baseline(file_path, value_list="all", levels=(50, 60, 70), rounds=5, file_prefix=None,
                                solver="exact", estimator="pooled"):
    """MAP's λ and the sequential baseline's λ (after each of `rounds` passes) at palette levels of a results file.

    file_path: results file of the unaligned model. value_list: values aligned (comma-separated or "all").
    levels: palette rows, percent (50,60,70; rows of the level table: 50, 60, 70, 80, 90, 99).
    rounds: sequential passes (the paper: 1 and 5). solver / estimator: as alignValues.py.
    file_prefix: output path without .json (default `{file_path without .json}_sequential_baseline`).
    Returns the path of the JSON written (format in the module docstring).
    """
    rounds = int(rounds)
    if rounds < 1:
        raise InputError(f"--rounds must be ≥ 1; got {rounds}")
    level_names = [_level_name(x) for x in artefacts.as_list(levels, "levels")]
    av = AlignValues(value_list, file_path, solver=solver, estimator=estimator)
    table = rewarding.level_table(av.records, av.value_list).round(3).set_index("Statistic")
    unknown = [name for name in level_names if name not in table.index]
    if unknown:
        raise InputError(f"--levels {unknown} are not palette rows; choose among "
                         f"{[r for r in table.index if r.endswith('%')]}.")
    out = {"file_path": file_path, "values": av.value_list, "solver": solver, "estimator": estimator,
           "rounds": rounds, "levels": []}
    for name in level_names:
        c = table.loc[name, av.value_list].to_numpy(dtype=np.float64)
        av.c = c
        result = av.solve()
        level = {"level": name, "c": c.tolist(),
                 "c_quantiles": evaluation.quantile_transform(av.rewards, c).tolist(),
                 "MAP": _entry(result.status, result.lam if result.success else None, result.realized, av.rewards),
                 "sequential": []}
        lam = None
        for r in range(1, rounds + 1):
            lam = av.sequential_optimize_lambda(lambda_init=lam, verbose=False)
            if lam == ["NaN"]:
                level["sequential"].append({"round": r, **_entry("failed", None, None, av.rewards)})
                break
            level["sequential"].append({"round": r, **_entry(av.result.status, lam, av.result.realized, av.rewards)})
        out["levels"].append(level)
        last = level["sequential"][-1]
        print(f"{name}: MAP {level['MAP']['status']}, quantiles {np.round(level['MAP']['quantiles'] or [], 3)}; "
              f"sequential round {last['round']}: quantiles {np.round(last['quantiles'] or [], 3)}")
    path = f"{file_prefix or records.file_stem(file_path) + '_sequential_baseline'}.json"
    records.save_json_atomic(out, path)
    print(f"wrote {path}")
    return path


def load_sequential_baseline(results_json):
    """Read and check the JSON of compute_sequential_baseline; returns its dict."""
    data = artefacts.read_json_artefact(
        results_json, "sequential-baseline results",
        "Write them with `python plot/plot_sequential_baseline.py compute_sequential_baseline ...`.")
    ok = isinstance(data, dict) and isinstance(data.get("values"), list) and isinstance(data.get("levels"), list) \
        and data["levels"] and all(isinstance(lv, dict) and {"level", "MAP", "sequential"} <= set(lv)
                                   for lv in data["levels"])
    if not ok:
        raise artefacts.ArtefactError(f"{results_json!r} is not a sequential-baseline file: it needs \"values\" and a "
                                      "non-empty \"levels\" list of {level, c_quantiles, MAP, sequential}.")
    return data


def plot_sequential_baseline(results_json, output_prefix=None, values_shown=None, rounds_shown=None):
    """Grouped bars of realized quantiles: one panel per palette level, one bar group per value, bars
    for MAP, the sequential baseline after round 1 and after the last round (or `rounds_shown`),
    with the palette's own quantile marked by a black tick.

    results_json: the file written by compute_sequential_baseline. values_shown: values drawn
    (comma-separated; default all). rounds_shown: sequential rounds drawn (default 1 and the last).
    A missing bar means that step failed. Writes {output_prefix}.pdf/.png (default: the JSON's
    path without .json); returns their paths.
    """
    data = load_sequential_baseline(results_json)
    names = data["values"]
    shown = artefacts.as_list(values_shown, "values_shown") if values_shown is not None else names
    unknown = [v for v in shown if v not in names]
    if unknown:
        raise artefacts.ArtefactError(f"values_shown {unknown} are not in {results_json!r} (values {names}).")
    index = [names.index(v) for v in shown]
    last = int(data.get("rounds") or max(len(lv["sequential"]) for lv in data["levels"]))
    wanted = sorted({1, last}) if rounds_shown is None else \
        [int(x) for x in artefacts.as_float_list(rounds_shown, "rounds_shown")]

    series = [("MAP", lambda lv: lv["MAP"])]
    for r in wanted:
        series.append((f"Sequential, round {r}",
                       lambda lv, r=r: next((s for s in lv["sequential"] if s.get("round") == r), {})))
    n_levels = len(data["levels"])
    fig, axes = plt.subplots(1, n_levels, figsize=(max(3.2, 0.9 * len(shown) + 1.5) * n_levels, 3.4),
                             squeeze=False, sharey=True)
    width = 0.8 / len(series)
    xs = np.arange(len(shown))
    for ax, level in zip(axes[0], data["levels"]):
        for s, (label, pick) in enumerate(series):
            q = pick(level).get("quantiles")
            heights = [np.nan if q is None else q[i] for i in index]
            ax.bar(xs + (s - (len(series) - 1) / 2) * width, heights, width, color=f"C{s}", label=label)
        if level.get("c_quantiles"):
            targets = [level["c_quantiles"][i] for i in index]
            ax.hlines(targets, xs - 0.42, xs + 0.42, colors="black", lw=1.2,
                      label="palette" if ax is axes[0][0] else None)
        ax.set_xticks(xs)
        ax.set_xticklabels([figstyle.value_label(v) for v in shown], rotation=30, ha="right", fontsize=8)
        ax.set_title(figstyle.text(f"palette {level['level']}"), fontsize=9)
        ax.set_ylim(0, 1)
    axes[0][0].set_ylabel("realized level (quantile)")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.tight_layout()
    fig.legend(handles, labels, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=len(labels), frameon=False,
               fontsize=8)
    return figstyle.save_figure(fig, output_prefix or records.file_stem(results_json))
