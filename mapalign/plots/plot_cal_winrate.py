"""Win rates of aligned models against their base model: the JSON summary, the LaTeX table and the
win-rate figures of the paper's comparison (MAP vs MORL, DPO, DPO-Soup).

    python plot/plot_cal_winrate.py collect_multiple_results \
        --model_files=results/a.json,results/b.json --base_model_file=results/base.json \
        --file_prefix=results_comparison/winrates
    python plot/plot_cal_winrate.py render_latex_table \
        --win_rate_results_list=results_comparison/winrates.json --file_prefix=results_comparison/winrates
    python plot/plot_cal_winrate.py plot_winrate \
        --win_rate_results_list=results_comparison/winrates.json --groups=MAP-D,MAP-D,DPO \
        --file_prefix=results_comparison/fig_compare_winrate
    python plot/plot_cal_winrate.py plot_helpful_vs_harmless \
        --win_rate_results_list=results_comparison/winrates.json --harmless_ratios=0.1,0.5,0.9 \
        --file_prefix=results_comparison/fig_helpful_vs_harmless

Win-rate summary format (`{file_prefix}.json`, written by collect_multiple_results): a JSON list,
one entry per model file:

    {"model-path": "results/a.json", "basemodel-path": "results/base.json", "label": "a",
     "metrics": ["gpt2-helpful", ...], "gpt2-helpful": 0.62, "gpt2-helpful_SE": 0.01, ..., "n_pairs": 2312}

A win is a strictly higher reward for the model's sample than for the base model's sample on the
same prompt; a tie counts ½ (the original counted ties as losses). With several samples per prompt,
every model sample meets every base sample of its prompt and the prompt scores the share won
(evaluation.win_rates); prompts weigh equally, and SE is the standard error of the per-prompt scores.
Records are paired by prompt id (evaluation.paired_prompt_samples). Entries may
carry a "group" (method name) used by plot_winrate. The summary of the original project (rates as
"%.2f" strings) is read too.
"""
import os


import numpy as np  # noqa: E402

from mapalign.plots import figstyle  # noqa: E402  (selects the headless backend before pyplot is used)
from mapalign.plots import artefacts  # noqa: E402
from mapalign import evaluation  # noqa: E402
from mapalign import records  # noqa: E402
from mapalign import values  # noqa: E402

plt = figstyle.plt

# Column order of the paper's table; metrics outside it follow in first-seen order.
TABLE_METRICS = ("perplexity", "coherence", "diversity", "gpt2-harmless", "gpt2-helpful", "humor")
NOT_AVAILABLE = "--"  # TeX's en dash: a metric a model was not scored on


def _label(path):
    return records.file_stem(os.path.basename(path))


def collect_multiple_results(model_files, base_model_file, file_prefix, metrics=None):
    """Win rate of each model file against the base model file, per metric, saved as {file_prefix}.json.

    model_files: results files of the aligned models (comma-separated or a list).
    base_model_file: results file of the base model on the same prompts.
    file_prefix: output path without extension.
    metrics: reward keys to compare (comma-separated). Default: for each model, every reward key
    present in both its file and the base file (so a decoding run without perplexity simply has
    no perplexity entry). Named metrics must be present in every file.
    Every pair is checked before anything is written: files covering different prompts are refused
    with one error naming them. Returns the JSON path (format in the module docstring).
    """
    model_files = artefacts.as_path_list(model_files, "model_files")
    wanted = artefacts.as_list(metrics, "metrics") if metrics is not None else None
    base_records = records.load_records(base_model_file)
    base_keys = records.reward_keys(base_records)
    results = []
    for path in model_files:
        model_records = records.load_records(path)
        if wanted is None:
            model_keys = set(records.reward_keys(model_records))
            names = [k for k in base_keys if k in model_keys]
            if not names:
                raise evaluation.EvaluationError(
                    f"{path!r} and {base_model_file!r} share no reward key; score both with the same values "
                    "(python rewardProcessor.py ... add_reward) or pass --metrics.")
        else:
            names = wanted
        rates = evaluation.win_rates(model_records, base_records, names, model_source=path,
                                     base_source=base_model_file)
        entry = {"model-path": path, "basemodel-path": base_model_file, "label": _label(path), "metrics": names}
        for name in names:
            entry[name], entry[f"{name}_SE"] = rates[name], rates[f"{name}_SE"]
        entry["n_pairs"] = rates["n_prompts"]
        results.append(entry)
    out = f"{file_prefix}.json"
    records.save_json_atomic(results, out)
    print(f"wrote {out}")
    return out


def load_win_rates(win_rate_results_list):
    """The win-rate summary as a list of dicts, from the list itself or from its JSON path.
    Rates may be floats or the original's "%.2f" strings; they are returned as floats (None when absent)."""
    source = "win-rate list"
    if isinstance(win_rate_results_list, str):
        source = win_rate_results_list
        win_rate_results_list = artefacts.read_json_artefact(
            source, "win-rate summary", "Write it with `python plot/plot_cal_winrate.py collect_multiple_results ...`.")
    if not isinstance(win_rate_results_list, (list, tuple)) or not win_rate_results_list:
        raise artefacts.ArtefactError(f"{source} must be a non-empty list of entries, one per model "
                                      "(as collect_multiple_results writes).")
    entries = []
    for i, entry in enumerate(win_rate_results_list):
        if not isinstance(entry, dict) or "model-path" not in entry:
            raise artefacts.ArtefactError(f"{source} entry {i} is not a win-rate entry (a dict with \"model-path\" "
                                          f"and one rate per metric): {str(entry)[:120]}")
        clean = dict(entry)
        for key, x in entry.items():
            if not (key.endswith("_SE") or f"{key}_SE" in entry):
                continue  # not a rate: paths, label, group, counts
            try:
                clean[key] = None if x is None else float(x)
            except (TypeError, ValueError):
                raise artefacts.ArtefactError(f"{source} entry {i} ({entry['model-path']}): {key!r} is {x!r}, "
                                              "not a number.") from None
        clean.setdefault("label", _label(entry["model-path"]))
        entries.append(clean)
    return entries


def _metrics_present(entries):
    seen = []
    for entry in entries:
        for key in entry:
            if f"{key}_SE" in entry and key not in seen:
                seen.append(key)
    return [m for m in TABLE_METRICS if m in seen] + [m for m in seen if m not in TABLE_METRICS]


def render_latex_table(win_rate_results_list, file_prefix, metrics=None):
    """A booktabs table of win rates (rate ± SE, 2 decimals), one row per model, written to {file_prefix}.tex.

    win_rate_results_list: a list of entries, or the path of the JSON collect_multiple_results writes.
    metrics: columns (comma-separated); default every metric present in any entry, in the paper's
    order (perplexity, coherence, diversity, gpt2-harmless, gpt2-helpful, humor) then the others.
    A metric an entry lacks is shown as an en dash. Returns the .tex path.
    """
    entries = load_win_rates(win_rate_results_list)
    names = artefacts.as_list(metrics, "metrics") if metrics is not None else _metrics_present(entries)
    if not names:
        raise artefacts.ArtefactError("the win-rate entries hold no metric (no `<metric>` with `<metric>_SE`).")
    lines = [r"\begin{tabular}{l" + "c" * len(names) + "}", r"\toprule",
             " & ".join(["Model"] + [figstyle.tex_escape(values.display_name(m)) for m in names]) + r" \\",
             r"\midrule"]
    for entry in entries:
        cells = [figstyle.tex_escape(entry.get("label"))]
        for m in names:
            rate, se = entry.get(m), entry.get(f"{m}_SE")
            if rate is None:
                cells.append(NOT_AVAILABLE)
            else:
                cells.append(f"{rate:.2f}" + ("" if se is None else f" $\\pm$ {se:.2f}"))
        lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", ""]
    path = f"{file_prefix}.tex"
    records.write_text_atomic("\n".join(lines), path)
    print(f"wrote {path}")
    return path


def _rates(entries, metric, source="win-rate entries"):
    missing = [e["label"] for e in entries if e.get(metric) is None]
    if missing:
        raise artefacts.ArtefactError(f"{source}: no {metric!r} win rate for {missing}; collect it "
                                      "(--metrics) or plot another metric.")
    return (np.array([e[metric] for e in entries]),
            np.array([e.get(f"{metric}_SE") or 0.0 for e in entries]))


def plot_helpful_vs_harmless(win_rate_results_list, harmless_ratios, file_prefix,
                             metrics=("gpt2-helpful", "gpt2-harmless"), xlabel="harmless ratio"):
    """Win rates against the share of harmlessness data each model was trained with (e.g. DPO runs
    over a grid of harmless ratios), one line with SE bars per metric, and the 0.5 tie line.

    win_rate_results_list: a list of entries or the JSON path (collect_multiple_results). harmless_ratios: one
    number per entry, in entry order. metrics: the metrics drawn (default helpful and harmless).
    xlabel: the x-axis label (what the ratio is the share of).
    Writes {file_prefix}.pdf and .png; returns their paths.
    """
    entries = load_win_rates(win_rate_results_list)
    ratios = np.array(artefacts.as_float_list(harmless_ratios, "harmless_ratios"))
    if ratios.size != len(entries):
        raise artefacts.ArtefactError(f"harmless_ratios has {ratios.size} numbers but there are {len(entries)} "
                                      "win-rate entries; give one ratio per entry, in the same order.")
    order = np.argsort(ratios, kind="stable")
    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    for metric in artefacts.as_list(metrics, "metrics"):
        rate, se = _rates(entries, metric)
        ax.errorbar(ratios[order], rate[order], yerr=se[order], marker="o", capsize=3,
                    label=figstyle.value_label(metric))
    ax.axhline(0.5, color="gray", ls=":", lw=1)
    ax.set_xlabel(figstyle.text(xlabel))
    ax.set_ylabel("win rate vs base model")
    ax.legend(frameon=False, fontsize=8)
    return figstyle.save_figure(fig, file_prefix)


def plot_winrate(win_rate_results_list, file_prefix, x_metric="gpt2-harmless", y_metric="gpt2-helpful",
                 groups=None, tolerance=0.03, jitter=0.0, seed=0):
    """Scatter of each model's win rates (x_metric vs y_metric) against the base model, grouped by method.

    Each group's mean is a large marker; the base model sits at (0.5, 0.5). The legend gives each
    group's navigation efficiency: the share of its models whose x and y win rates are both
    ≥ 0.5 − tolerance (evaluation.navigation_efficiency; the original used tolerance 0.03).
    groups: one label per entry (comma-separated, entry order); default the entries' "group"
    field, else their label. jitter: uniform noise (± jitter, seeded by `seed`) added to the drawn
    points only, to separate identical rates. Writes {file_prefix}.pdf and .png and
    {file_prefix}_navigation.json ({group: {"navigation_efficiency", "n_models", "mean_x", "mean_y"}}).
    Returns the written paths.
    """
    entries = load_win_rates(win_rate_results_list)
    if groups is not None:
        labels = artefacts.as_list(groups, "groups")
        if len(labels) != len(entries):
            raise artefacts.ArtefactError(f"groups has {len(labels)} labels but there are {len(entries)} win-rate "
                                          "entries; give one group per entry, in the same order.")
    else:
        labels = [e.get("group") or e["label"] for e in entries]
    x, _ = _rates(entries, x_metric)
    y, _ = _rates(entries, y_metric)
    rng = np.random.default_rng(seed)
    fig, ax = plt.subplots(figsize=(5, 4))
    summary = {}
    for i, group in enumerate(dict.fromkeys(labels)):
        members = np.array([lab == group for lab in labels])
        points = np.column_stack([x[members], y[members]])
        efficiency = evaluation.navigation_efficiency(points, 0.5, tolerance)
        summary[group] = {"navigation_efficiency": efficiency, "n_models": int(members.sum()),
                          "mean_x": float(points[:, 0].mean()), "mean_y": float(points[:, 1].mean())}
        color = f"C{i % 10}"
        shake = rng.uniform(-jitter, jitter, size=points.shape) if jitter else 0.0
        ax.scatter(*(points + shake).T, color=color, alpha=0.5, s=18)
        ax.scatter(points[:, 0].mean(), points[:, 1].mean(), color=color, s=120, edgecolor="black",
                   label=figstyle.text(f"{group} (NE {efficiency:.2f})"))
    ax.scatter([0.5], [0.5], marker="*", s=200, color="black", label="base model")
    ax.axvline(0.5 - tolerance, color="gray", ls=":", lw=1)
    ax.axhline(0.5 - tolerance, color="gray", ls=":", lw=1)
    ax.set_xlabel(figstyle.text(f"win rate: {values.display_name(x_metric)}"))
    ax.set_ylabel(figstyle.text(f"win rate: {values.display_name(y_metric)}"))
    ax.legend(frameon=False, fontsize=7, loc="best")
    summary_path = f"{figstyle.strip_extension(file_prefix)}_navigation.json"
    paths = figstyle.save_figure(fig, file_prefix)
    records.save_json_atomic(summary, summary_path)
    print(f"wrote {summary_path}")
    return paths + [summary_path]
