"""Reward distributions of a results file, before and after alignment.

    python plot/plot_reward_dist.py plot_hist --json_file=results/opt1.3b-Anthropic-harmless.json
    python plot/plot_reward_dist.py plot_hist_positive --json_file=results/opt1.3b-Imdb.json
    python plot/plot_reward_dist.py plot_weighted_unweighted_histograms \
        --file_path=results/llama2_chat-Anthropic-harmless.json \
        --values_to_align=humor,gpt2-helpful,gpt2-harmless --lam=5.925,2.443,2.923

Each command writes a PDF and a PNG and returns their paths.
"""
import os


import numpy as np  # noqa: E402
from scipy.stats import gaussian_kde  # noqa: E402

from mapalign.plots import figstyle  # noqa: E402  (selects the headless backend before pyplot is used)
from mapalign.plots import artefacts  # noqa: E402
from mapalign import records  # noqa: E402
from mapalign import solver  # noqa: E402
from mapalign import values  # noqa: E402

plt = figstyle.plt


def _panel_grid(count, per_row=3, size=(4.0, 3.0)):
    cols = min(count, per_row)
    rows = -(-count // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(size[0] * cols, size[1] * rows), squeeze=False)
    for ax in axes.ravel()[count:]:
        ax.set_visible(False)
    return fig, axes.ravel()[:count]


def plot_hist(json_file, value_list=None, bins=20, output_prefix=None):
    """Histogram of every reward in a results file, one panel per value, with its mean marked.

    json_file: results file (JSON array of records). value_list: values to show (comma-separated;
    default: every reward key of the file). bins: histogram bins (20, as the original).
    output_prefix: where to write; default `{json_file without .json}_reward_hist` (.pdf and .png).
    """
    recs = artefacts.load_records_cached(json_file)
    names = values.expand_value_list(value_list) if value_list else records.reward_keys(recs)
    if not names:
        raise records.RecordsError(f"{json_file!r} holds no reward keys to plot; add rewards first "
                                   "(python rewardProcessor.py ... add_reward).")
    rewards = records.reward_matrix(recs, names, source=json_file)
    fig, axes = _panel_grid(len(names))
    for ax, name, row in zip(axes, names, rewards):
        ax.hist(row, bins=bins, color="tab:blue", alpha=0.8)
        ax.axvline(row.mean(), color="black", ls="--", lw=1, label=f"mean {row.mean():.3g}")
        ax.set_xlabel(figstyle.value_label(name))
        ax.set_ylabel("samples")
        ax.legend(frameon=False, fontsize=8)
    fig.suptitle(figstyle.text(f"{os.path.basename(json_file)} (n = {rewards.shape[1]})"), fontsize=10)
    fig.tight_layout()
    return figstyle.save_figure(fig, output_prefix or f"{records.file_stem(json_file)}_reward_hist")


def plot_hist_positive(json_file, bins=20, output_prefix=None):
    """Histogram of the `positive` value (sentiment probability in [0, 1]).

    The original exponentiated this column, which was right only while it stored log-probabilities;
    rewards now store probabilities, so they are plotted as they are. Values outside [0, 1] are
    refused (a file scored with logits or log-probabilities). Default output:
    `{json_file without .json}_positive_hist`.
    """
    recs = artefacts.load_records_cached(json_file)
    positive = records.reward_matrix(recs, ["positive"], source=json_file)[0]
    if positive.min() < 0 or positive.max() > 1:
        raise records.RecordsError(
            f"`positive` in {json_file!r} ranges over [{positive.min():.3g}, {positive.max():.3g}], not [0, 1]: the "
            "file holds logits or log-probabilities. Re-score it (python rewardProcessor.py ... add_reward --value=positive).")
    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    ax.hist(positive, bins=bins, range=(0, 1), color="tab:green", alpha=0.8)
    ax.axvline(positive.mean(), color="black", ls="--", lw=1, label=f"mean {positive.mean():.3f}")
    ax.set_xlabel(figstyle.text(f"{values.display_name('positive')} (probability)"))
    ax.set_ylabel("samples")
    ax.legend(frameon=False, fontsize=8)
    return figstyle.save_figure(fig, output_prefix or f"{records.file_stem(json_file)}_positive_hist")


def _resolve_lambda(file_path, aligned, lam, lambda_log):
    if lam is not None:
        lam = artefacts.as_float_list(lam, "lam")
    elif lambda_log is not None:
        entries = [e for e in artefacts.read_lambda_log(lambda_log, file_path)
                   if e["values"] == aligned and e["lam"] is not None]
        if not entries:
            raise artefacts.ArtefactError(f"{lambda_log!r} holds no successful solve for {file_path!r} with values "
                                          f"{aligned}; solve that palette first or pass --lam.")
        lam = list(entries[-1]["lam"])
    else:
        raise artefacts.ArtefactError("give the λ to plot: --lam=1.2,0.5 (one per aligned value) or "
                                      "--lambda_log=results/alignValues.txt (its last matching solve).")
    if len(lam) != len(aligned):
        raise artefacts.ArtefactError(f"--lam has {len(lam)} numbers but {len(aligned)} values are aligned "
                                      f"({aligned}); give one λ per value.")
    if any(x < 0 or not np.isfinite(x) for x in lam):
        raise artefacts.ArtefactError(f"λ must be finite and ≥ 0; got {lam}.")
    return np.array(lam)


def _kde_curve(x, weights, grid):
    """Gaussian KDE with half of Scott's bandwidth (seaborn's bw_adjust=0.5, as the original), or
    None when the sample is degenerate (constant values or a single effective sample)."""
    if np.ptp(x) == 0 or 1.0 / np.sum(weights ** 2) < 2:
        return None
    try:
        kde = gaussian_kde(x, bw_method=lambda k: 0.5 * k.scotts_factor(), weights=weights)
    except np.linalg.LinAlgError:
        return None
    return kde(grid)


def plot_weighted_unweighted_histograms(file_path, values_to_align, lam=None, values_to_evaluate=None,
                                        lambda_log=None, per_prompt=False, bins=30, output_prefix=None):
    """Each value's reward distribution before alignment and after MAP's tilt by λ.

    The aligned distribution reweights the file's samples by softmax(λᵀr_align) (solver.tilt_weights);
    its mean is the realized level. Per evaluated value: density histograms and KDEs of the original
    and the reweighted rewards, vertical lines at both means and an arrow from the original mean to
    the realized one.

    file_path: results file of the unaligned model. values_to_align: the values λ applies to
    (comma-separated). lam: one λ per aligned value (comma-separated), or lambda_log: a λ log
    (results/alignValues.txt) whose last successful line for this file and value list is used.
    values_to_evaluate: values to draw (default: the aligned ones). per_prompt: normalise the
    weights within each prompt (files with several samples per prompt). bins: 30 as the original.
    output_prefix: default `{file_path without .json}_hist_lam={λ...}`.
    """
    aligned = values.expand_value_list(values_to_align)
    shown = values.expand_value_list(values_to_evaluate) if values_to_evaluate else aligned
    lam = _resolve_lambda(file_path, aligned, lam, lambda_log)
    groups = records.prompt_groups(artefacts.load_records_cached(file_path)) if per_prompt else None
    weights = solver.tilt_weights(artefacts.load_rewards(file_path, aligned), lam, groups=groups)
    rewards = artefacts.load_rewards(file_path, shown)
    ess = 1.0 / np.sum(weights ** 2)

    fig, axes = _panel_grid(len(shown))
    for ax, name, x in zip(axes, shown, rewards):
        lo, hi = float(x.min()), float(x.max())
        hist_range = (lo, hi) if hi > lo else (lo - 0.5, hi + 0.5)
        ax.hist(x, bins=bins, range=hist_range, density=True, color="tab:gray", alpha=0.45, label="original")
        ax.hist(x, bins=bins, range=hist_range, weights=weights, density=True, color="tab:red", alpha=0.45,
                label="MAP-aligned")
        grid = np.linspace(*hist_range, 200)
        for w, color in ((np.full(x.size, 1.0 / x.size), "tab:gray"), (weights, "tab:red")):
            curve = _kde_curve(x, w, grid)
            if curve is not None:
                ax.plot(grid, curve, color=color, lw=1.2)
        before, after = float(x.mean()), float(weights @ x)
        ax.axvline(before, color="tab:gray", ls="--", lw=1)
        ax.axvline(after, color="tab:red", ls="--", lw=1)
        y = 0.9 * ax.get_ylim()[1]
        if after != before:
            ax.annotate("", xy=(after, y), xytext=(before, y),
                        arrowprops=dict(arrowstyle="->", color="black", lw=1))
        ax.set_xlim(*hist_range)
        ax.set_xlabel(figstyle.value_label(name))
        ax.set_ylabel("density")
        ax.set_title(figstyle.text(f"mean {before:.3g} $\\to$ {after:.3g}"), fontsize=9)
    axes[0].legend(frameon=False, fontsize=8)
    lam_text = ", ".join(f"{values.display_name(v)} {x:.3g}" for v, x in zip(aligned, lam))
    fig.suptitle(figstyle.text(f"$\\lambda$: {lam_text}   (ESS {ess:.0f} of {weights.size})"), fontsize=9)
    fig.tight_layout()
    default = f"{records.file_stem(file_path)}_hist_lam={records.lam_string(lam)}"
    return figstyle.save_figure(fig, output_prefix or default)
