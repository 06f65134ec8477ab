"""Merge reward columns and generation shards back into one results file.

    python mergeProcessor.py merge_added_rewards --original_file_path=results/smollm2-135m-builtin.json
    python mergeProcessor.py merge_gendata_bypattern --json_file_pattern='results/temp/smollm2-135m-builtin_*to*.json'

Reward columns: `rewardProcessor.add_reward` writes each value to `{dir}/temp/{base}_temp_{value}.json`
(`.jsonl` for a .jsonl results file; records' ids, prompts and the value's scores). Merging matches them
to the results file by record id (by position only for files without ids, and then only when lengths and
prompts agree), adds one key per value, rewrites the file atomically in its own format (JSON array or
JSON Lines), records each scorer's provenance in the metadata sidecar, and only then deletes the temp
files it merged. Values whose add_reward has not finished (a journal `{temp}.journal.jsonl` and no temp
file) are left for a later merge, with a note.

Fixes against the original (SPEC-MAP §2.2): only files named exactly `{base}_temp_{value}.json` are
picked up (the original's prefix match imported and deleted another dataset's rewards, e.g. those of
`{base}_lam=..._val=...`); nothing is paired silently by position; an incomplete or mismatched temp
file stops the merge with a report and nothing is written or deleted; shards are ordered by their
start index and gaps or overlaps are refused (the original concatenated them in file-system order).
"""
import glob
import math
import os
import re
import urllib.parse

from mapalign import arguments
from mapalign import records
from mapalign.errors import ExistsError
from mapalign.records import RecordsError


class OutputExistsError(ExistsError):
    """An output file already exists and would be replaced; the message names it and the override flag.
    (A ValueError too, so the CLIs report it as one line, like other bad inputs.)"""


SHARD_NAME = re.compile(r"^(?P<prefix>.+)_(?P<start>\d+)to(?P<end>\d+)(?P<ext>\.jsonl?)$")


def _split_results_name(file_path):
    """(folder, base, extension) of `{folder}/{base}.json` or `.jsonl` (extension "" for other names)."""
    folder, name = os.path.split(file_path)
    for ext in (".jsonl", ".json"):
        if name.endswith(ext):
            return folder, name[:-len(ext)], ext
    return folder, name, ""


def temp_reward_path(file_path, value):
    """`{dir}/temp/{base}_temp_{value}.json` for results file `{dir}/{base}.json` (`.jsonl` for `.jsonl`:
    the temp file keeps the results file's format). A value name holding '/' or '%', such as rm:FOLDER/attr,
    is %-quoted there; the temp-file finder unquotes it."""
    folder, base, ext = _split_results_name(file_path)
    value = value.replace("%", "%25").replace("/", "%2F")
    return os.path.join(folder, "temp", f"{base}_temp_{value}{ext or '.json'}")


def _reward_temp_names(file_path):
    """{value: (temp path, is_journal)} of every reward temp file or journal of exactly this results file."""
    folder, base, ext = _split_results_name(file_path)
    temp_dir = os.path.join(folder, "temp")
    if not os.path.isdir(temp_dir):
        return {}
    suffix = re.escape(ext or ".json")
    pattern = re.compile(r"^" + re.escape(base) + r"_temp_(?P<value>[^/]+?)" + suffix +
                         r"(?P<journal>" + re.escape(records.JOURNAL_SUFFIX) + r")?$")
    found = {}
    for entry in sorted(os.listdir(temp_dir)):
        match = pattern.match(entry)
        if match and not entry.endswith(".meta.json") and "_temp_" not in match["value"]:
            found.setdefault(urllib.parse.unquote(match["value"]), []).append((os.path.join(temp_dir, entry),
                                                                              bool(match["journal"])))
    return found


def find_reward_temp_files(file_path):
    """{value: path} of the finished reward temp files of exactly this results file (never another dataset's)."""
    return {v: p for v, items in _reward_temp_names(file_path).items() for p, journal in items if not journal}


def find_reward_journals(file_path):
    """{value: journal path} of add_reward runs on this file that are still running or were interrupted."""
    return {v: p for v, items in _reward_temp_names(file_path).items() for p, journal in items if journal}


def match_scores(recs, entries, value, source="results file", temp_source="temp file"):
    """Scores of `value` for every record of `recs`, taken from temp-file `entries`.

    By id when the entries carry ids (the source's ids are its `id` fields or, for original files, the
    positions); otherwise by position, only when the lengths are equal and every prompt agrees.
    Returns a list of floats aligned with `recs`. Raises RecordsError describing every mismatch.
    """
    problems = []
    if all("id" in e for e in entries):
        by_id = {}
        for e in entries:
            if str(e["id"]) in by_id:
                problems.append(f"id {e['id']!r} appears twice")
            by_id[str(e["id"])] = e
        source_ids = [records.record_id(r, j) for j, r in enumerate(recs)]
        missing = [i for i in source_ids if i not in by_id]
        extra = sorted(set(by_id) - set(source_ids))
        if missing:
            problems.append(f"{len(missing)} of {len(recs)} records have no score (first ids {missing[:5]}); "
                            "the add_reward run was interrupted or is still running: re-run it to finish")
        if extra:
            problems.append(f"{len(extra)} scored ids are not in the {source} (first {extra[:5]}); the temp "
                            "file belongs to another version of the file")
        paired = [by_id.get(i) for i in source_ids]
    else:
        if len(entries) != len(recs):
            problems.append(f"it has {len(entries)} entries without ids but the {source} has {len(recs)} records; "
                            "position pairing needs equal lengths")
            paired = []
        elif not all("prompt" in e for e in entries):
            problems.append("its entries have neither ids nor prompts, so they cannot be checked against the records")
            paired = []
        else:
            paired = list(entries)
    for j, (r, e) in enumerate(zip(recs, paired)):
        if e is None:
            continue
        if "prompt" in e and "prompt" in r and e["prompt"] != r["prompt"]:
            problems.append(f"record {records.record_id(r, j)!r} has prompt {r['prompt'][:60]!r} but the temp entry "
                            f"has {e['prompt'][:60]!r}")
            break
    scores = []
    bad = []
    for j, e in enumerate(paired):
        if e is None:
            continue
        x = e.get(value)
        if not isinstance(x, (int, float)) or isinstance(x, bool) or not math.isfinite(x):
            bad.append(records.record_id(recs[j], j))
        scores.append(x)
    if bad:
        problems.append(f"{len(bad)} entries lack a finite number for {value!r} (first ids {bad[:5]})")
    if problems:
        raise RecordsError(f"cannot merge {temp_source} into {source}: " + "; ".join(problems) + ".")
    return [float(x) for x in scores]


def _settings(meta):
    """A shard's generation settings without its range (shards of one run agree on these)."""
    fingerprint = (meta or {}).get("fingerprint") or {}
    return {k: v for k, v in fingerprint.items() if k not in ("start_index", "end_index")}


class MergeProcessor:
    """Merge reward temp files into a results file, and generation shards into one file."""

    def merge_added_rewards(self, original_file_path, save_to_temp_folder=False, values=None):
        """Add the reward columns waiting in `{dir}/temp/{base}_temp_{value}.json` to a results file.

        Args:
            original_file_path: the results file (`{dir}/{base}.json`).
            save_to_temp_folder: write `{dir}/temp/{base}.json` instead of overwriting the original.
            values: merge only these values (comma-separated or list); default every temp file of this file.
        Returns:
            the path written (or the unchanged original when there was nothing to merge).
        Raises:
            RecordsError (nothing written, nothing deleted) when any temp file is incomplete, malformed, or
            does not match the records.
        """
        recs = records.load_records(original_file_path)
        found = find_reward_temp_files(original_file_path)
        journals = find_reward_journals(original_file_path)
        if values is not None:
            wanted = arguments.str_list(values, "values")
            absent = [v for v in wanted if v not in found]
            unfinished = [v for v in absent if v in journals]
            if unfinished:
                raise RecordsError(f"add_reward of {unfinished} on {original_file_path} has not finished (journal "
                                   f"{[journals[v] for v in unfinished]}): it is still running or was interrupted; "
                                   "re-run the same add_reward command to finish it, then merge.")
            if absent:
                raise RecordsError(f"no reward temp file for {absent} next to {original_file_path} (expected "
                                   f"{[temp_reward_path(original_file_path, v) for v in absent]}); run add_reward "
                                   "for them first.")
            found = {v: found[v] for v in wanted}
        pending = sorted(v for v in journals if v not in found)
        if pending:
            print(f"merge: note: add_reward of {pending} has not finished (journals in "
                  f"{os.path.dirname(journals[pending[0]])}); those values are not merged now: finish them "
                  "(re-run the same add_reward command), then merge again.")
        if not found:
            print(f"merge: no reward temp files for {original_file_path} (expected "
                  f"{temp_reward_path(original_file_path, '<value>')}); nothing to merge.")
            return original_file_path

        columns, provenance, problems = {}, {}, []
        for value, path in found.items():
            try:
                entries = records.load_records(path, required=())
                columns[value] = match_scores(recs, entries, value, source=original_file_path, temp_source=path)
            except RecordsError as e:
                problems.append(str(e))
                continue
            provenance[value] = records.load_metadata(path) or {"temp_file": os.path.basename(path)}
        if problems:
            raise RecordsError("merge refused, nothing written or deleted: " + " | ".join(problems))

        replaced = [v for v in columns if any(v in r for r in recs)]
        for value, scores in columns.items():
            for r, x in zip(recs, scores):
                r[value] = x
        folder, name = os.path.split(original_file_path)
        target = os.path.join(folder, "temp", name) if save_to_temp_folder else original_file_path
        meta = records.load_metadata(original_file_path)
        meta.setdefault("rewards", {}).update(provenance)
        records.save_records(recs, target)  # in the file's own format (.json array or .jsonl)
        records.save_metadata(target, meta)
        for value, path in found.items():
            os.remove(path)
            if os.path.isfile(records.metadata_path(path)):
                os.remove(records.metadata_path(path))
        note = f" (replaced existing {replaced})" if replaced else ""
        print(f"merge: added {sorted(columns)} to {len(recs)} records of {target}{note}")
        return target

    def merge_gendata_bypattern(self, json_file_pattern, keep_shards=False, overwrite=False, output_path=None):
        """Join generation shards `{dir}/temp/{prefix}_{start}to{end}.json` into `{dir}/{prefix}.json`.

        Args:
            json_file_pattern: glob of the shards, e.g. 'results/temp/smollm2-135m-builtin_*to*.json'
                (quote it in the shell). Files whose names do not end in `_{start}to{end}.json` (metadata
                sidecars, checkpoints) are ignored.
            keep_shards: keep the shard files after merging (default: delete them, as the original).
            overwrite: replace an existing merged file (default: refuse).
            output_path: write the merged file here instead (pipelines use it when the shard names hold a λ
                that is only solved while the pipeline runs).
        Returns:
            the merged file's path (one folder above `temp/`, or the shards' folder when it is not `temp`).
        Raises:
            RecordsError when no shard matches, the pattern matches shards of several datasets, or the
            ranges have a gap or an overlap, or a shard does not cover its range.
        """
        paths = sorted(glob.glob(json_file_pattern))
        shards = []
        for path in paths:
            match = SHARD_NAME.match(os.path.basename(path))
            if match and not path.endswith(".meta.json"):
                shards.append((int(match["start"]), int(match["end"]), match["prefix"], path))
        if not shards:
            raise RecordsError(f"no shard files match {json_file_pattern!r} (expected names "
                               "'{prefix}_{start}to{end}.json'); check the pattern and quote it in the shell.")
        # 'X_*to*.json' names dataset X exactly: the glob also matches 'X_lam=..._val=..._0to5.json' (another
        # dataset's shards), which must not be mixed in
        exact = os.path.basename(json_file_pattern)
        tail = "_*to*.jsonl" if exact.endswith("_*to*.jsonl") else "_*to*.json"
        if exact.endswith(tail) and not any(ch in exact[:-len(tail)] for ch in "*?["):
            shards = [s for s in shards if s[2] == exact[:-len(tail)]]
            if not shards:
                raise RecordsError(f"no shard files of {exact[:-len(tail)]!r} match {json_file_pattern!r}.")
        prefixes = sorted({s[2] for s in shards})
        folders = sorted({os.path.dirname(s[3]) for s in shards})
        extensions = sorted({os.path.splitext(s[3])[1] for s in shards})
        if len(prefixes) > 1 or len(folders) > 1 or len(extensions) > 1:
            raise RecordsError(f"{json_file_pattern!r} matches shards of several datasets ({prefixes} in {folders}); "
                               "use a pattern naming one, e.g. 'results/temp/<prefix>_*to*.json'.")
        shards.sort()
        problems = []
        for (s0, e0, _, p0), (s1, e1, _, p1) in zip(shards, shards[1:]):
            if s1 < e0:
                problems.append(f"{os.path.basename(p1)} overlaps {os.path.basename(p0)} (prompts {s1}..{e0 - 1})")
            elif s1 > e0:
                problems.append(f"gap: prompts {e0}..{s1 - 1} are in no shard (between {os.path.basename(p0)} and "
                                f"{os.path.basename(p1)}); generate --start_index={e0} --end_index={s1}")
        merged, metas = [], []
        for start, end, _, path in shards:
            recs = records.load_records(path)
            ids = {r["prompt_id"] for r in recs if "prompt_id" in r}
            if ids and ids != set(range(start, end)):
                problems.append(f"{os.path.basename(path)} does not cover prompts {start}..{end - 1} "
                                f"(holds {len(ids)} prompt ids, range {min(ids)}..{max(ids)})")
            merged += recs
            metas.append(records.load_metadata(path))
        settings = [_settings(m) for m in metas]
        differing = [os.path.basename(p) for (_, _, _, p), st in zip(shards, settings) if st != settings[0]]
        if differing:
            problems.append(f"shards {differing} were generated with other settings (model, seed, sampling, prompts) "
                            f"than {os.path.basename(shards[0][3])}; regenerate them with the same settings")
        if problems:
            raise RecordsError("shard merge refused, nothing written or deleted: " + " | ".join(problems))

        folder = folders[0]
        out_dir = os.path.dirname(folder) if os.path.basename(os.path.normpath(folder)) == "temp" else folder
        target = output_path or os.path.join(out_dir, prefixes[0] + extensions[0])  # the shards' format
        if os.path.exists(target) and not overwrite:
            raise OutputExistsError(f"{target} already exists; pass --overwrite=True to replace it with the merged "
                                  "shards (nothing was changed).")
        records.save_records(merged, target)
        records.save_metadata(target, self._merged_metadata(metas, shards, merged, target))
        if not keep_shards:
            for _, _, _, path in shards:
                os.remove(path)
                if os.path.isfile(records.metadata_path(path)):
                    os.remove(records.metadata_path(path))
        print(f"merge: joined {len(shards)} shards ({len(merged)} records, prompts "
              f"{shards[0][0]}..{shards[-1][1] - 1}) into {target}")
        return target

    @staticmethod
    def _merged_metadata(metas, shards, merged, target):
        """The first shard's sidecar with totals and ranges for the whole file, plus the shard list."""
        base = dict(metas[0]) if metas and metas[0] else {}
        start, end = shards[0][0], shards[-1][1]
        base["file"] = os.path.basename(target)
        base["shards"] = [{"file": os.path.basename(p), "start_index": s, "end_index": e,
                           "timing": m.get("timing") if m else None, "seed": m.get("seed") if m else None}
                          for (s, e, _, p), m in zip(shards, metas)]
        counts = dict(base.get("counts", {}))
        counts.update({"prompts": end - start, "records": len(merged), "start_index": start, "end_index": end,
                       "new_tokens": sum(((m or {}).get("counts") or {}).get("new_tokens", 0) for m in metas)})
        base["counts"] = counts
        if "fingerprint" in base:
            base["fingerprint"] = dict(base["fingerprint"], start_index=start, end_index=end)
        return base
