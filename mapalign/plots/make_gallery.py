"""Render every paper figure from one scored results file, making the intermediate artefacts with
the toolkit's own functions (nothing typed in).

    make demo && make figures                     # the offline SmolLM2 demo's results
    .venv/bin/python plot/make_gallery.py --file_path=/work/shared/reference/map/llama2_chat-Anthropic-harmless.json

Steps (all outputs under --out_dir, default results/figures; artefacts in {out_dir}/data):
 1. copy the results file (and its sidecar) to data/, so no artefact lands next to the user's file;
 2. its level table (RewardProcessor.assess_original_value -> `_realC-levels.csv`); the palettes
    are that table's 50%, 60% and --palette_quantile rows of the aligned values;
 3. MAP λ of those palettes and the single-value ("Sole-X") palettes, solved by AlignValues and
    logged to data/alignValues.txt (the λ log every figure reads them from);
 4. points tables (plot/artefacts.py format) built from the λ log: Original / MAP / Sole-X;
 5. random-λ realized levels (RewardProcessor.assess_postalignment_multivalue, `_numericC-levels.csv`)
    and random MAP λ next to Dirichlet λ (AlignValues.gen_rand_MAP_lambda CSVs);
 6. the sequential baseline's JSON and the level table in quantiles (plot_sequential_baseline,
    plot_tab_in_quantiles);
 7. small MC-aligned (MAP-D) generations on the first --mc_prompts prompts, with the demo's λ and
    with mixes of two single-value λ (--mix_ratios), and their win rates against the base outputs of
    the same prompts (plot_cal_winrate: the win-rate scatter with navigation efficiency, win rates over
    the mix ratio, the LaTeX table); needs the file's generating model offline (skipped with a note
    otherwise, or with --skip_mc);
 8. every figure, as PDF and PNG, in out_dir.
"""
import json
import os
import shutil


import numpy as np  # noqa: E402

from mapalign.plots import figstyle  # noqa: E402,F401  (selects the headless backend first)
from mapalign.plots import artefacts  # noqa: E402
from mapalign.plots import plot_pairwise_pareto, plot_radar_tabresults, plot_rand_lambda_MAP_region  # noqa: E402
from mapalign.plots import plot_cal_winrate, plot_reward_dist, plot_sequential_baseline, plot_tab_in_quantiles  # noqa: E402
from mapalign import records  # noqa: E402
from mapalign import values  # noqa: E402
from mapalign.align import AlignValues  # noqa: E402
from mapalign.rewarding import RewardProcessor  # noqa: E402

DEFAULT_FILE = "results/smollm2-135m-builtin.json"
DEFAULT_SUMMARY = "results/demo/summary.json"
NOT_ALIGNED = ("length",)  # reported, but not a value one aligns toward


def _banner(text):
    print(f"\n== {text}", flush=True)


def _read_summary(summary, file_path):
    """The demo summary when it describes file_path, else {}."""
    if not summary or not os.path.isfile(summary):
        return {}
    with open(summary, encoding="utf-8") as f:
        data = json.load(f)
    if os.path.normpath(data.get("file", "")) != os.path.normpath(file_path):
        return {}
    return data


def choose_values(reward_keys, summary, values_to_align=None):
    """The aligned values: --values_to_align, else the demo palette's values, then the file's other
    reward keys (the paper's values first; not maintained ones such as perplexity, not length, not the
    legacy "harmless") until there are three."""
    if values_to_align is not None:
        chosen = values.expand_value_list(values_to_align)
    else:
        chosen = [v for v in summary.get("palette", {}) if v in reward_keys]
        # the paper's values first (humor, helpful, harmless), then the file's other keys; not "harmless",
        # the legacy scorer that gpt2-harmless replaced
        known = [v for task in values.TASK_VALUES.values() for v in task]
        candidates = sorted((k for k in reward_keys if k != "harmless"),
                            key=lambda k: known.index(k) if k in known else len(known))
        for key in candidates:
            if len(chosen) >= 3:
                break
            if key not in chosen and key not in values.MAINTAINED_VALUES and key not in NOT_ALIGNED:
                chosen.append(key)
    missing = [v for v in chosen if v not in reward_keys]
    if missing:
        raise artefacts.ArtefactError(f"the results file has no reward {missing}; its rewards are {reward_keys}.")
    if len(chosen) < 2:
        raise artefacts.ArtefactError(f"the figures need at least two values to align; got {chosen} from the "
                                      f"rewards {reward_keys}. Pass --values_to_align=v1,v2[,v3].")
    return chosen


def solve_logged(file_path, value_list, c, log_prefix):
    """Solve one palette with AlignValues and append it to the gallery's λ log. Returns λ or None."""
    align = AlignValues(value_list, file_path, c_list=[float(x) for x in c])
    lam, ok = align.optimize_lambda(verbose=False)
    align.save_results_to_text(lam, ok, save_prefix=log_prefix)
    status = "feasible" if ok else align.result.status
    print(f"  {','.join(value_list)} c={np.round(c, 3).tolist()}: {status}"
          + (f", λ={np.round(lam, 3).tolist()}" if ok else ""))
    return lam if ok else None


def logged_lam(log_path, file_path, value_list, c):
    """λ of the λ-log line for this file, value list and palette (as a {value: λ} dict), or None."""
    for entry in reversed(artefacts.read_lambda_log(log_path, file_path)):
        if entry["values"] == list(value_list) and np.allclose(entry["c"], np.round(c, 3), atol=1e-3):
            return None if entry["lam"] is None else dict(zip(value_list, entry["lam"].tolist()))
    return None


def write_points(path, reference, shown, points, title):
    table = {"title": title, "reference": reference, "values": shown, "points": points}
    records.save_json_atomic(table, path)
    print(f"wrote {path}")
    return path


def mix_series(sole_lam, aligned, ratios):
    """λ mixes of two single-value solves for the win-rate-vs-ratio figure, the offline stand-in for the
    paper's DPO runs over a grid of harmless-data ratios: λ(ρ) = ((1 − ρ)·λ_x, ρ·λ_y), where y is the
    aligned value named like "harmless" (else the second one) and x the first other one.

    sole_lam: {value: {value: λ} or None} of the Sole-X solves. ratios: the ρ in [0, 1].
    Returns (x, y, [(ρ, [λ_x, λ_y]), ...]), or None when either single-value palette was infeasible.
    """
    y = next((v for v in aligned if "harmless" in v), aligned[1])
    x = next(v for v in aligned if v != y)
    if not sole_lam.get(x) or not sole_lam.get(y):
        return None
    lam_x, lam_y = sole_lam[x][x], sole_lam[y][y]
    return x, y, [(float(r), [(1.0 - float(r)) * lam_x, float(r) * lam_y]) for r in ratios]


def _mc_winrates(work_file, base_recs, lam, aligned, mix, data_dir, out_dir, mc_prompts, mc_samples, mc_tokens,
                 seed):
    """MAP-D outputs for the first mc_prompts prompts, with the demo's λ and with each λ mix of `mix`
    (see mix_series), and their win rates against the base outputs of the same prompts: the win-rate
    scatter, the win rates over the mix ratio, and the LaTeX table of all of them. Returns the paths
    written (empty with a printed note when no MC generation is possible)."""
    meta = records.load_metadata(work_file)
    model = meta.get("model")
    source = meta.get("prompt_source", {})
    if not model or not source.get("data_name"):
        print(f"note: {work_file!r} has no generation sidecar naming its model and prompts, so no MC-aligned "
              "outputs can be made for it; the win-rate figures are skipped (run on the demo's results for them).")
        return []
    import torch
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    from mapalign.generation import TextGeneration
    sampling = meta.get("sampling", {})
    gen = TextGeneration(basemodel_name=model, data_name=source["data_name"], save_directory=data_dir, seed=seed,
                         num_prompts=source.get("num_prompts_limit"),
                         use_chat_template=sampling.get("use_chat_template", "auto"),
                         max_new_tokens=mc_tokens, dtype=meta.get("dtype"))

    def decode(lam_list, value_list):  # one MAP-D shard; the model loads once for all of them
        return gen.generate_from_MC_aligned_model(",".join(f"{x:.6g}" for x in lam_list), ",".join(value_list),
                                                  MC_nsamples=mc_samples, start_index=0, end_index=mc_prompts,
                                                  batch_size=mc_samples * 8)
    try:
        shard = decode(lam, aligned)
    except OSError as e:
        print(f"note: the model {model!r} cannot be loaded here ({e}); the win-rate figures are skipped.")
        return []
    wanted = {r["prompt_id"] for r in records.load_records(shard)}
    base_subset = os.path.join(data_dir, f"base_first{mc_prompts}.json")
    records.save_json_atomic([r for r in base_recs if r.get("prompt_id") in wanted], base_subset)
    prefix = os.path.join(data_dir, "winrates_mc_vs_base")
    plot_cal_winrate.collect_multiple_results([shard], base_subset, prefix, metrics=aligned)
    paths = plot_cal_winrate.plot_winrate(prefix + ".json", os.path.join(out_dir, "fig_winrate_mc_vs_base"),
                                          x_metric=aligned[0], y_metric=aligned[1], groups=["MAP-D"])
    entries = plot_cal_winrate.load_win_rates(prefix + ".json")
    if mix is None:
        print("note: a single-value palette was infeasible, so there is no λ-mix series and no win rate over ratios.")
    else:
        x, y, series = mix
        shards = [decode(lam_mix, [x, y]) for _, lam_mix in series]
        mix_prefix = os.path.join(data_dir, "winrates_lambda_mix")
        plot_cal_winrate.collect_multiple_results(shards, base_subset, mix_prefix, metrics=[x, y])
        paths += plot_cal_winrate.plot_helpful_vs_harmless(
            mix_prefix + ".json", [r for r, _ in series], os.path.join(out_dir, "fig_winrate_vs_mix"), metrics=[x, y],
            xlabel=f"share of the Sole-{values.display_name(y)} $\\lambda$ (rest: Sole-{values.display_name(x)})")
        entries += plot_cal_winrate.load_win_rates(mix_prefix + ".json")
    paths.append(plot_cal_winrate.render_latex_table(entries, os.path.join(out_dir, "tab_winrates")))
    return paths


def make_gallery(file_path=DEFAULT_FILE, summary=DEFAULT_SUMMARY, values_to_align=None, palette_quantile=70,
                 out_dir="results/figures", num_random_lambda=300, scaling_MAX=None, num_rand_map=40, seed=0,
                 skip_mc=False, mc_prompts=32, mc_samples=4, mc_tokens=24, mix_ratios=(0.0, 0.5, 1.0)):
    """Make the artefacts and render every figure (see the module docstring for the steps).

    file_path: scored results file (default the demo's results/smollm2-135m-builtin.json).
    summary: the demo's summary.json; used (palette values, λ of the MC step) only when it names file_path.
    values_to_align: aligned values (comma-separated; default the demo palette's values plus other reward
        keys up to three). palette_quantile: the MAP palette row (50..99) of the level table.
    out_dir: output folder. num_random_lambda: random λ of the Pareto scatter. scaling_MAX: largest Σλ of
        the random λ (default 1.5 × Σλ of the MAP solve). num_rand_map: MAP λ per gen_rand_MAP_lambda CSV.
    seed: seed of every random draw. skip_mc: skip the MC-aligned generation and the win-rate figure.
    mc_prompts, mc_samples, mc_tokens: size of that generation (first prompts, samples per prompt, new tokens).
    mix_ratios: the ρ of the λ-mix series (see mix_series), one MC generation each.
    Returns the list of figure paths written.
    """
    if not os.path.isfile(file_path):
        raise artefacts.ArtefactError(f"results file not found: {file_path!r}. Make the demo's results with "
                                      "`make demo`, or pass --file_path=<a scored results JSON>.")
    if int(palette_quantile) not in (50, 60, 70, 80, 90, 99):
        raise artefacts.ArtefactError(f"--palette_quantile must be one of 50, 60, 70, 80, 90, 99 (a row of the level "
                                      f"table); got {palette_quantile}.")
    q = int(palette_quantile)
    data_dir = os.path.join(out_dir, "data")
    os.makedirs(data_dir, exist_ok=True)
    summary_data = _read_summary(summary, file_path)
    recs = records.load_records(file_path)
    keys = records.reward_keys(recs)
    aligned = choose_values(keys, summary_data, values_to_align)
    shown = [k for k in keys if np.all([isinstance(r.get(k), (int, float)) for r in recs])]
    figures = []

    _banner("1. working copy")
    work = os.path.join(data_dir, os.path.basename(file_path))
    if os.path.abspath(work) != os.path.abspath(file_path):
        shutil.copyfile(file_path, work)
        if os.path.isfile(records.metadata_path(file_path)):
            shutil.copyfile(records.metadata_path(file_path), records.metadata_path(work))
    print(f"{len(recs)} records; rewards {keys}; aligned values {aligned}")

    _banner("2. level table (RewardProcessor.assess_original_value)")
    levels_csv = RewardProcessor(values_to_evaluate=shown, file_path=work, progress=False).assess_original_value()
    table = artefacts.read_levels_csv(levels_csv)
    rows = sorted({50, 60, q})
    palettes = {p: artefacts.csv_columns(table, aligned, levels_csv)[table.index.get_loc(f"{p}%")] for p in rows}

    _banner("3. MAP and single-value palettes (AlignValues, λ log)")
    log_prefix = os.path.join(data_dir, "alignValues")
    if os.path.exists(log_prefix + ".txt"):
        os.remove(log_prefix + ".txt")  # this run's solves only
    for p in rows:
        solve_logged(work, aligned, palettes[p], log_prefix)
    for i, v in enumerate(aligned):
        solve_logged(work, [v], palettes[q][i:i + 1], log_prefix)
    log = log_prefix + ".txt"
    map_lam = {p: logged_lam(log, work, aligned, palettes[p]) for p in rows}
    sole_lam = {v: logged_lam(log, work, [v], palettes[q][i:i + 1]) for i, v in enumerate(aligned)}

    _banner("4. points tables")
    original = {"label": "Original"}
    main_points = [original] + ([{"label": f"MAP {q}%", "lam": map_lam[q]}] if map_lam[q] else [])
    main_points += [{"label": f"Sole-{values.display_name(v)}", "lam": lam} for v, lam in sole_lam.items() if lam]
    name = os.path.basename(file_path)
    points_pareto = write_points(os.path.join(data_dir, "points_pareto.json"), work, aligned, main_points,
                                 f"{name}: MAP vs single-value palettes at {q}%")
    points_palettes = write_points(os.path.join(data_dir, "points_palettes.json"), work, shown,
                                   [original] + [{"label": f"MAP {p}%", "lam": map_lam[p]} for p in rows if map_lam[p]],
                                   f"{name}: MAP palettes")
    points_single = write_points(os.path.join(data_dir, "points_single.json"), work, shown, main_points,
                                 f"{name}: single values at {q}%")
    for p in rows:
        if not map_lam[p]:
            print(f"note: the {p}% palette is infeasible; it is left out of the figures.")

    _banner("5. random λ (assess_postalignment_multivalue, gen_rand_MAP_lambda)")
    budget = sum(map_lam[q].values()) if map_lam[q] else 4.0
    scaling_MAX = float(scaling_MAX) if scaling_MAX is not None else float(np.ceil(1.5 * budget))
    rand_csv = RewardProcessor(values_to_evaluate=aligned, values_to_align=aligned, file_path=work, progress=False) \
        .assess_postalignment_multivalue(k=num_random_lambda, scaling=-1, scaling_MAX=scaling_MAX, seed=seed)
    rand_map = {}
    for subset in (aligned[:2], aligned[:3]) if len(aligned) >= 3 else (aligned[:2],):
        prefix = os.path.join(data_dir, f"rand_MAP_lambda_{len(subset)}values")
        if os.path.exists(prefix + ".csv"):
            os.remove(prefix + ".csv")  # gen_rand_MAP_lambda appends; this run's rows only
        accepted, rate = AlignValues(subset, work, seed=seed).gen_rand_MAP_lambda(num_rand_map, scaling_MAX,
                                                                                  save_prefix=prefix)
        print(f"  {','.join(subset)}: {len(accepted)} λ accepted (acceptance {rate:.2f})")
        if accepted:
            rand_map[len(subset)] = prefix + ".csv"

    _banner("6. figures")
    fig = lambda stem: os.path.join(out_dir, stem)  # noqa: E731
    figures += plot_reward_dist.plot_hist(work, value_list=shown, output_prefix=fig("fig_reward_hist"))
    if "positive" in keys:
        figures += plot_reward_dist.plot_hist_positive(work, output_prefix=fig("fig_positive_hist"))
    else:
        print("note: no `positive` reward in this file, so plot_hist_positive has nothing to draw (it is for the "
              "Imdb task's positive-sentiment probability).")
    if map_lam[q]:
        figures += plot_reward_dist.plot_weighted_unweighted_histograms(
            work, aligned, lambda_log=log, values_to_evaluate=shown, output_prefix=fig(f"fig_hist_MAP{q}"))
    figures += plot_pairwise_pareto.plot_matrix_scatterplot(rand_csv, output_prefix=fig("fig_matrix_randlambda"))
    figures += plot_pairwise_pareto.plot_pareto(rand_csv, points_file=points_pareto, output_prefix=fig("fig_pareto"))
    if len(shown) >= 3:
        figures += plot_radar_tabresults.plot_radar(points_palettes, output_prefix=fig("fig_radar_palettes"))
        figures += plot_radar_tabresults.plot_radar(points_single, output_prefix=fig("fig_radar_single"))
    if 3 in rand_map:
        figures += plot_rand_lambda_MAP_region.plot_lambdas_3D(rand_map[3], *aligned[:3],
                                                               output_prefix=fig("fig_lambda_region_3D"))
    if 2 in rand_map:
        figures += plot_rand_lambda_MAP_region.plot_lambdas_2D_subplots(
            list(rand_map.values()), aligned[0], aligned[1], output_prefix=fig("fig_lambda_region_2D"))
    figures += _others(work, aligned, rows, points_palettes, data_dir, out_dir)

    if skip_mc:
        print("note: --skip_mc given: no MC-aligned outputs, no win-rate figure.")
    else:
        _banner("7. MC-aligned outputs and win rates (MAP-D vs base)")
        lam = summary_data.get("lambda")
        mc_values = list(lam) if lam else aligned
        lam = [lam[v] for v in mc_values] if lam else (list(map_lam[q].values()) if map_lam[q] else None)
        if lam is None:
            print("note: no feasible MAP λ for the MC step; the win-rate figure is skipped.")
        else:
            mix = mix_series(sole_lam, aligned, artefacts.as_float_list(mix_ratios, "mix_ratios"))
            figures += _mc_winrates(work, recs, lam, mc_values, mix, data_dir, out_dir, int(mc_prompts),
                                    int(mc_samples), int(mc_tokens), seed)

    _banner(f"done: {len(figures)} files in {out_dir} (listed below)")
    return figures


def _others(work, aligned, rows, points_palettes, data_dir, out_dir):
    """The sequential baseline (JSON + figure) and the MAP palettes' levels as quantiles (JSON + CSV table)."""
    result = plot_sequential_baseline.compute_sequential_baseline(
        work, value_list=",".join(aligned), levels=",".join(str(p) for p in rows), rounds=5,
        file_prefix=os.path.join(data_dir, "sequential_baseline"))
    paths = plot_sequential_baseline.plot_sequential_baseline(
        result, output_prefix=os.path.join(out_dir, "fig_sequential_baseline"))
    tables = plot_tab_in_quantiles.tab_in_quantiles(
        points_file=points_palettes, file_prefix=os.path.join(out_dir, "tab_MAP_palettes_in_quantiles"))
    return list(paths) + list(tables)
