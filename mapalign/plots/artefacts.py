"""Readers for the stored artefacts the figures are drawn from, and the small "points table" format.

Every number in a figure comes from one of these files, never from a constant in a script:

* results JSON (records.py): rewards per sample; a figure uses them for distributions, for the
  quantile transform, and to compute realized levels under a λ.
* random-λ CSV of AlignValues.gen_rand_MAP_lambda (SPEC-MAP §2.3), header
  `filepath,c_Levels,values,optimized_lambda,Dirichlet_lambda_ref` (optionally `status,seed`); each
  list field is a quoted comma-joined list. Rows whose status is not "feasible" are skipped.
* λ log `results/alignValues.txt`, one line per solve:
  `filepath: <path>, c Levels: <c1>,...,<ck>, values: ['v1', ...], optimized lambda: <l1>,...,<lk>`
  (`optimized lambda: NaN` for a failed solve).
* levels CSVs of RewardProcessor: `{file}_realC-levels.csv` (column `Statistic`, rows avg, avg_std,
  50%, ...; one column per value) and `..._numericC-levels.csv` (one row per λ: the realized level of
  every evaluated value, then one `{v}_lam` column per aligned value).
* points table (JSON), written by the user or by plot/make_gallery.py, naming the models or
  alignments a figure compares (radar, sequential baseline, quantile table, Pareto overlay):

      {
        "reference": "results/llama2_chat-Anthropic-harmless.json",
        "values": ["humor", "gpt2-helpful", "gpt2-harmless"],
        "points": [
          {"label": "Original"},
          {"label": "MAP 80%", "lam": {"humor": 5.942, "gpt2-helpful": 2.432, "gpt2-harmless": 2.923}},
          {"label": "MAP-D 80%", "file": "results/llama2_chat-...-MAP-D.json"},
          {"label": "OPT PPO 70%", "csv": "results/opt-...-PPO_realC-levels.csv", "row": "avg"},
          {"label": "paper", "levels": {"humor": 2.172, "gpt2-helpful": -0.934}},
          {"label": "Sequential, 1 round", "group": "70%", "lam": {...}, "c": {...}}
        ]
      }

  `reference` (required when a point uses `lam`, or when quantiles are drawn) is the results file
  of the unaligned model: quantiles are taken within its reward distributions, and `lam` points
  are realized levels of its samples tilted by λ (solver.realized_levels, pooled over samples;
  add "per_prompt": true to a point for the per-prompt estimator). A point with no source is the
  reference model itself (its mean rewards). `file`: mean rewards of another results file (e.g.
  MAP-D or PPO outputs). `csv`: one row of a levels CSV (`row` is a Statistic name such as "avg" for
  a realC-levels CSV, or a 0-based row number for a numericC-levels CSV; default "avg" / 0).
  `levels`: realized levels in reward units. Optional per point: `group` (x-axis group of the
  sequential-baseline bars, e.g. the palette level "70%") and `c` (the palette targets, drawn as
  marks). `values` (optional) fixes the values shown and their order. Relative paths are relative
  to the working directory, as every path in the toolkit.
"""
import ast
import csv
import json
import os
import re

import numpy as np
import pandas as pd

from mapalign import records
from mapalign import solver
from mapalign.errors import InputError


class ArtefactError(InputError):
    """A stored artefact is missing or malformed; the message names the file and the fix."""


_RECORDS_CACHE = {}


def load_records_cached(file_path):
    """records.load_records, read once per process and file version (figures reuse one file often)."""
    key = (os.path.abspath(file_path), os.path.getmtime(file_path) if os.path.exists(file_path) else None)
    if key not in _RECORDS_CACHE:
        _RECORDS_CACHE[key] = records.load_records(file_path)
    return _RECORDS_CACHE[key]


def load_rewards(file_path, value_list):
    """Rewards of `value_list` from a results file as a float64 (k, n) array (records.reward_matrix:
    clear errors for missing or non-finite rewards)."""
    return records.reward_matrix(load_records_cached(file_path), list(value_list), source=file_path)


def _split_list(field):
    """'1.0,2.0' or '[1.0, 2.0]' or "['a', 'b']" -> list of stripped strings."""
    field = field.strip().strip("[]()")
    return [part.strip().strip("'\"") for part in field.split(",") if part.strip()]


def read_rand_lambda_csv(path):
    """Read a random-λ CSV of gen_rand_MAP_lambda.

    Returns {"values": [k names], "lam": (r, k), "reference_lam": (r, k), "c": (r, k),
    "filepaths": [r]} for the rows whose status is feasible (all rows when there is no status
    column). Raises ArtefactError for a missing file, missing columns, rows naming other values,
    or no usable row.
    """
    if not os.path.isfile(path):
        raise ArtefactError(f"random-λ CSV not found: {path!r}. Write it first with "
                            "`python alignValues.py ... gen_rand_MAP_lambda` or fix the path.")
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    needed = ["values", "optimized_lambda", "Dirichlet_lambda_ref"]
    if not rows or any(col not in rows[0] for col in needed):
        raise ArtefactError(f"{path!r} is not a random-λ CSV: it needs a header with "
                            f"filepath,c_Levels,values,optimized_lambda,Dirichlet_lambda_ref and at least one row.")
    names = _split_list(rows[0]["values"])
    lam, ref, c, paths = [], [], [], []
    for i, row in enumerate(rows):
        if row.get("status") not in (None, "", "feasible"):
            continue
        if _split_list(row["values"]) != names:
            raise ArtefactError(f"{path!r} row {i + 1} names values {_split_list(row['values'])}, row 1 names "
                                f"{names}: one CSV must hold one value list. Write each list to its own file.")
        try:
            lam_row = [float(x) for x in _split_list(row["optimized_lambda"])]
            ref_row = [float(x) for x in _split_list(row["Dirichlet_lambda_ref"])]
            c_row = [float(x) for x in _split_list(row.get("c_Levels") or "")] or [np.nan] * len(names)
        except ValueError:
            raise ArtefactError(f"{path!r} row {i + 1} holds a non-numeric λ or palette: {row}") from None
        if not (len(lam_row) == len(ref_row) == len(c_row) == len(names)):
            raise ArtefactError(f"{path!r} row {i + 1} does not hold {len(names)} numbers per list field.")
        if not np.all(np.isfinite(lam_row)):
            continue
        lam.append(lam_row), ref.append(ref_row), c.append(c_row), paths.append(row.get("filepath"))
    if not lam:
        raise ArtefactError(f"{path!r} holds no feasible λ rows to plot.")
    return {"values": names, "lam": np.array(lam), "reference_lam": np.array(ref), "c": np.array(c),
            "filepaths": paths}


_LOG_LINE = re.compile(r"^filepath: (?P<path>.*), c Levels: (?P<c>.*), values: (?P<values>\[.*\]), "
                       r"optimized lambda: (?P<lam>.*)$")


def read_lambda_log(path, file_path=None):
    """Parse the λ log (results/alignValues.txt). Returns a list of dicts
    {"filepath", "c" (k,), "values" [k], "lam" (k,) or None for a failed solve}, in file order,
    restricted to lines about `file_path` when given."""
    if not os.path.isfile(path):
        raise ArtefactError(f"λ log not found: {path!r}. Solve a palette first (python alignValues.py ...).")
    entries = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            match = _LOG_LINE.match(line)
            if not match:
                raise ArtefactError(f"{path!r} line {number} is not a λ log line "
                                    f"('filepath: ..., c Levels: ..., values: [...], optimized lambda: ...'): {line[:120]!r}")
            lam_text = match["lam"].strip()
            entries.append({
                "filepath": match["path"],
                "c": np.array([float(x) for x in _split_list(match["c"])]),
                "values": list(ast.literal_eval(match["values"])),
                "lam": None if lam_text.strip("[]'\" ") == "NaN" else np.array([float(x) for x in _split_list(lam_text)]),
            })
    if file_path is not None:
        entries = [e for e in entries if os.path.normpath(e["filepath"]) == os.path.normpath(file_path)]
    return entries


def read_levels_csv(path):
    """Read a realC-levels CSV (indexed by its `Statistic` column) or a numericC-levels CSV
    (one row per λ) into a pandas DataFrame."""
    if not os.path.isfile(path):
        raise ArtefactError(f"levels CSV not found: {path!r}. Write it with rewardProcessor.py "
                            "(assess_original_value or assess_postalignment_multivalue) or fix the path.")
    try:
        frame = pd.read_csv(path)
    except (pd.errors.EmptyDataError, pd.errors.ParserError) as e:
        raise ArtefactError(f"levels CSV {path!r} cannot be read: {e}") from None
    if frame.empty:
        raise ArtefactError(f"levels CSV {path!r} holds no rows.")
    if "Statistic" in frame.columns:
        frame = frame.set_index("Statistic")
    return frame


def csv_columns(frame, columns, path):
    """The named columns of a levels CSV as float arrays, with one clear error for absent ones."""
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ArtefactError(f"{path!r} has no column(s) {missing}; its columns are {list(frame.columns)}.")
    return frame[list(columns)].to_numpy(dtype=np.float64)


def read_json_artefact(path, what, how_to_make):
    """Parse the JSON file `path`. Raises ArtefactError naming `what` and how to make it when the file
    is missing, and the parse error when it is not valid JSON."""
    if not os.path.isfile(path):
        raise ArtefactError(f"{what} not found: {path!r}. {how_to_make}")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ArtefactError(f"{what} {path!r} is not valid JSON: {e}") from None


def load_points(points_file):
    """Read and validate a points table (format in the module docstring). Returns its dict."""
    table = read_json_artefact(points_file, "points table", "Write one (format: python -c "
                               "\"from mapalign.plots import artefacts; help(artefacts)\") or run plot/make_gallery.py.")
    points = table.get("points") if isinstance(table, dict) else None
    if not isinstance(points, list) or not points:
        raise ArtefactError(f"points table {points_file!r} needs a non-empty list under \"points\".")
    for i, point in enumerate(points):
        sources = [key for key in ("lam", "file", "csv", "levels") if key in point] if isinstance(point, dict) else []
        if not isinstance(point, dict) or "label" not in point or len(sources) > 1:
            raise ArtefactError(f"points table {points_file!r}, point {i}: each point needs a \"label\" and at most "
                                f"one of lam/file/csv/levels; got {point}.")
        if (not sources or sources == ["lam"]) and not table.get("reference"):
            raise ArtefactError(f"points table {points_file!r}, point {point['label']!r} is computed from the "
                                "reference model, but the table names no \"reference\" results file.")
    return table


def table_values(table):
    """The values a points table shows: its "values" list, else those of its first point with a
    lam/levels dict, else the reward keys of its reference file."""
    if table.get("values"):
        return list(table["values"])
    for point in table["points"]:
        for key in ("levels", "lam"):
            if isinstance(point.get(key), dict):
                return list(point[key])
    return records.reward_keys(load_records_cached(table["reference"]))


def point_levels(point, value_list, reference=None):
    """Realized levels (reward units) of one point for `value_list`, shape (k,). See the module
    docstring for the point sources."""
    label = point.get("label")
    if "levels" in point:
        missing = [v for v in value_list if v not in point["levels"]]
        if missing:
            raise ArtefactError(f"point {label!r} gives no level for {missing}.")
        return np.array([float(point["levels"][v]) for v in value_list])
    if "file" in point:
        return load_rewards(point["file"], value_list).mean(axis=1)
    if "csv" in point:
        frame = read_levels_csv(point["csv"])
        row = point.get("row", "avg" if frame.index.name == "Statistic" else 0)
        try:
            selected = frame.loc[row] if frame.index.name == "Statistic" else frame.iloc[int(row)]
        except (KeyError, IndexError, ValueError):
            raise ArtefactError(f"point {label!r}: {point['csv']!r} has no row {row!r}.") from None
        missing = [v for v in value_list if v not in selected.index]
        if missing:
            raise ArtefactError(f"point {label!r}: {point['csv']!r} has no column(s) {missing}.")
        return selected[value_list].to_numpy(dtype=np.float64)
    rewards_eval = load_rewards(reference, value_list)
    lam = point.get("lam") or {}
    if not lam:
        return rewards_eval.mean(axis=1)
    aligned = list(lam)
    groups = records.prompt_groups(load_records_cached(reference)) if point.get("per_prompt") else None
    return solver.realized_levels(load_rewards(reference, aligned), np.array([float(lam[v]) for v in aligned]),
                                  rewards_eval, groups=groups)


def table_levels(table, value_list):
    """(labels [p], levels (p, k)) of every point of a points table."""
    levels = np.stack([point_levels(p, value_list, table.get("reference")) for p in table["points"]])
    return [p["label"] for p in table["points"]], levels


def as_list(arg, name="argument"):
    """A list from what fire passes for a list flag: a list/tuple, or a comma-separated string."""
    if isinstance(arg, (list, tuple)):
        items = [str(a).strip() for a in arg]
    elif isinstance(arg, str):
        items = [a.strip() for a in arg.strip("[]()").split(",")]
    else:
        items = [str(arg)]
    items = [a.strip("'\"") for a in items if a]
    if not items:
        raise ArtefactError(f"{name} is empty; give one or more items, comma-separated.")
    return items


def as_path_list(arg, name="argument"):
    """File paths from what fire passes: a list/tuple, or a comma-separated string. MAP file names
    hold commas themselves ("..._lam=2.090,8.610_val=..."), so comma-separated pieces are re-joined
    for as long as the joined text names an existing file; pieces that never do are kept as they
    are (the reader then reports them as missing)."""
    if not isinstance(arg, str):
        return as_list(arg, name)
    pieces, paths, current = arg.strip("[]()").split(","), [], []
    for piece in pieces:
        current.append(piece)
        joined = ",".join(current).strip().strip("'\"")
        if os.path.exists(joined):
            paths.append(joined)
            current = []
    paths += [p.strip().strip("'\"") for p in current if p.strip()]
    if not paths:
        raise ArtefactError(f"{name} is empty; give one or more file paths, comma-separated.")
    return paths


def as_float_list(arg, name="argument"):
    """Floats from a fire list flag (`--lam=1.2,0.5`, `--lam=[1.2,0.5]` or a single number)."""
    if isinstance(arg, (int, float)) and not isinstance(arg, bool):
        return [float(arg)]
    try:
        return [float(a) for a in as_list(arg, name)]
    except ValueError:
        raise ArtefactError(f"{name} must be numbers, comma-separated (e.g. 1.5,0.2); got {arg!r}.") from None
