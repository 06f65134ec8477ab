"""Realized levels of aligned models as quantiles of the base model's rewards (the paper's tables in
quantile form, e.g. MAP-D vs MAP-F at the 50/60/70% palettes).

    python plot/plot_tab_in_quantiles.py --reference_file=results/opt1.3b-Anthropic-harmless.json \
        --levels_csvs=results/opt-MAP-D-70_realC-levels.csv,results/opt-PPO-70_realC-levels.csv \
        --file_prefix=results/plot_tab_in_quantiles
    python plot/plot_tab_in_quantiles.py --points_file=tables/opt_D_vs_F.json --file_prefix=...

Inputs (no number is built in; every level comes from a file):
* levels_csvs: levels CSVs of rewardProcessor.py. A `_realC-levels.csv` contributes its row `row`
  (default "avg", the aligned model's mean rewards); a `_numericC-levels.csv` contributes every
  row (one per λ). Labels: the CSV name without `_realC-levels.csv` (numeric rows get "#i").
* points_file: a points table (format: plot/artefacts.py), e.g.
  {"reference": "results/opt1.3b-Anthropic-harmless.json", "values": ["humor", "gpt2-helpful"],
   "points": [{"label": "MAP-D 70%", "levels": {"humor": 2.494, "gpt2-helpful": -1.287}},
              {"label": "MAP-F 70%", "csv": "results/opt-PPO-70_realC-levels.csv", "row": "avg"}]}
* reference_file: the base model's results file; the quantile of a level is the share of its
  samples strictly below the level (left searchsorted / n, as the original). Defaults to the
  points table's "reference".

Outputs: {file_prefix}.json
    {"reference": path, "values": [v...], "rows": [{"label", "source", "levels": {v: x}, "quantiles": {v: q}}]}
and {file_prefix}.csv: column label, then one column per value holding the quantile (3 decimals).
"""
import os


import pandas as pd  # noqa: E402

from mapalign.plots import artefacts  # noqa: E402
from mapalign import evaluation  # noqa: E402
from mapalign import records  # noqa: E402
from mapalign import values  # noqa: E402

LEVEL_SUFFIXES = ("_realC-levels.csv", "_numericC-levels.csv", ".csv")


def _csv_label(path):
    base = os.path.basename(path)
    for suffix in LEVEL_SUFFIXES:
        if base.endswith(suffix):
            return base[:-len(suffix)]
    return base


def _csv_rows(path, value_list, row):
    """(label, source, levels (k,)) for the rows of one levels CSV."""
    frame = artefacts.read_levels_csv(path)
    if frame.index.name == "Statistic":
        if row not in frame.index:
            raise artefacts.ArtefactError(f"{path!r} has no row {row!r}; its rows are {list(frame.index)}.")
        levels = artefacts.csv_columns(frame.loc[[row]], value_list, path)[0]
        return [(_csv_label(path), f"{path}:{row}", levels)]
    levels = artefacts.csv_columns(frame, value_list, path)
    return [(f"{_csv_label(path)}#{i}", f"{path}:{i}", levels[i]) for i in range(len(levels))]


def _csv_values(path, reference_keys):
    frame = artefacts.read_levels_csv(path)
    return [c for c in frame.columns if c in reference_keys]


def tab_in_quantiles(reference_file=None, levels_csvs=None, points_file=None, value_list=None,
                     file_prefix="plot_tab_in_quantiles", row="avg"):
    """Convert realized levels (reward units) into quantiles of the reference model's rewards.

    reference_file: base model results file (default: the points table's "reference").
    levels_csvs: levels CSVs (comma-separated); points_file: a points table; at least one of them.
    value_list: values to convert (comma-separated or "all"); default the points table's values,
    else the columns of the first CSV that are reward keys of the reference.
    row: the Statistic row taken from realC-levels CSVs ("avg", or a palette row such as "70%").
    Writes {file_prefix}.json and {file_prefix}.csv (formats in the module docstring); returns
    their paths.
    """
    if levels_csvs is None and points_file is None:
        raise artefacts.ArtefactError("give the levels to convert: --levels_csvs=a_realC-levels.csv,... "
                                      "and/or --points_file=table.json.")
    table = artefacts.load_points(points_file) if points_file is not None else None
    reference_file = reference_file or (table or {}).get("reference")
    if not reference_file:
        raise artefacts.ArtefactError("name the reference (base model) results file: --reference_file=results/x.json.")
    csv_paths = artefacts.as_path_list(levels_csvs, "levels_csvs") if levels_csvs is not None else []
    if value_list is not None:
        names = values.expand_value_list(value_list)
    elif table is not None:
        names = artefacts.table_values(table)
    else:
        names = _csv_values(csv_paths[0], records.reward_keys(artefacts.load_records_cached(reference_file)))
        if not names:
            raise artefacts.ArtefactError(f"{csv_paths[0]!r} has no column named after a reward of {reference_file!r}; "
                                          "pass --value_list.")
    reference = artefacts.load_rewards(reference_file, names)

    rows = []
    if table is not None:
        for point in table["points"]:
            source = next((point[k] for k in ("file", "csv") if k in point), "levels" if "levels" in point else
                          ("lam" if "lam" in point else "reference"))
            rows.append((point["label"], str(source), artefacts.point_levels(point, names, reference_file)))
    for path in csv_paths:
        rows.extend(_csv_rows(path, names, row))

    out_rows = []
    for label, source, levels in rows:
        quantiles = evaluation.quantile_transform(reference, levels)
        out_rows.append({"label": label, "source": source,
                         "levels": {v: float(x) for v, x in zip(names, levels)},
                         "quantiles": {v: float(q) for v, q in zip(names, quantiles)}})
    result = {"reference": reference_file, "values": names, "rows": out_rows}
    frame = pd.DataFrame([{"label": r["label"], **r["quantiles"]} for r in out_rows]).round(3)
    records.save_json_atomic(result, f"{file_prefix}.json")
    records.write_text_atomic(frame.to_csv(index=False), f"{file_prefix}.csv")
    print(frame.to_string(index=False))
    print(f"wrote {file_prefix}.json and {file_prefix}.csv")
    return [f"{file_prefix}.json", f"{file_prefix}.csv"]
