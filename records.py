"""The record store: reading, validating and atomically writing MAP results files.

A results file is a JSON array (indent 4), one object ("record") per generated sample, in prompt
order. The original MAP keys are kept and a few are added:

    prompt        the prompt text fed to the model (before any chat template)
    generated     prompt + continuation, as the original stored it
    continuation  the generated text alone (the original re-derived it by slicing `generated`)
    id            unique record id "{prompt_id}-{sample_id}"
    prompt_id     index of the prompt in its prompt source (pairs records across models)
    sample_id     index of the sample among that prompt's samples (0 when one per prompt)
    <value>       one float per scored value, named exactly after the value ("humor", ...)

Files from the original project carry only prompt/generated/<values>; every reader here accepts
them, deriving ids from positions. A metadata sidecar `{stem}.meta.json` next to a results file
records how it was made (model, seed, sampling config, ...).
"""
import json
import math
import os
import tempfile

import numpy as np

from errors import InputError


class RecordsError(InputError):
    """A results file or its contents cannot be used; the message names the input and the fix."""


def load_records(path):
    """Read a results file (JSON array, or JSON Lines when the name ends in .jsonl).

    Returns the list of record dicts. Raises RecordsError for a missing, empty or malformed file.
    """
    if not os.path.isfile(path):
        raise RecordsError(f"results file not found: {path!r}. Generate it first "
                           "(python gendata.py ... generate_from_original_model) or fix --file_path.")
    with open(path, encoding="utf-8") as f:
        text = f.read()
    if not text.strip():
        raise RecordsError(f"results file is empty: {path!r}. Re-run the step that writes it.")
    try:
        if path.endswith(".jsonl"):
            records = [json.loads(line) for line in text.splitlines() if line.strip()]
        else:
            records = json.loads(text)
    except json.JSONDecodeError as e:
        raise RecordsError(f"results file is not valid JSON: {path!r} (line {e.lineno}, column {e.colno}: "
                           f"{e.msg}). The file may be half-written; regenerate it.") from None
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise RecordsError(f"results file {path!r} must hold a JSON array of objects (one per sample).")
    if not records:
        raise RecordsError(f"results file holds no records: {path!r}.")
    return records


def _umask_mode():
    """Permissions a plain open() would give a new file (mkstemp makes files owner-only)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def write_text_atomic(text, path):
    """Write a text file through a temp file in the same folder and a rename, so a reader never
    sees a half-written file (a kill leaves the old file intact)."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _umask_mode())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def save_json_atomic(obj, path, indent=4):
    """Write `obj` as JSON (indent 4, as the original) to `path` atomically."""
    write_text_atomic(json.dumps(obj, indent=indent, ensure_ascii=False), path)


def metadata_path(results_path):
    """The sidecar of `results/x.json` is `results/x.meta.json`."""
    stem = results_path[:-len(".json")] if results_path.endswith(".json") else results_path
    return stem + ".meta.json"


def load_metadata(results_path):
    """The sidecar's dict, or {} when the file has none (e.g. files from the original project)."""
    path = metadata_path(results_path)
    if not os.path.isfile(path):
        return {}
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def save_metadata(results_path, metadata):
    save_json_atomic(metadata, metadata_path(results_path), indent=2)


def record_id(record, position):
    """A record's id; files without ids get their position, as the original paired them."""
    return str(record.get("id", position))


def prompt_id(record, position):
    """The prompt index of a record; files without it hold one sample per prompt, in order."""
    return record.get("prompt_id", position)


def continuation_of(record):
    """The continuation text. Uses the stored field; for original files, strips the prompt off
    `generated` (and, unlike the original, does not drop text when `generated` does not start
    with the prompt: it then returns `generated` whole)."""
    if "continuation" in record:
        return record["continuation"]
    generated, prompt = record.get("generated", ""), record.get("prompt", "")
    if generated.startswith(prompt):
        return generated[len(prompt):].strip()
    return generated.strip()


def reward_keys(records):
    """Names of the numeric (reward) keys present in the first record, in file order."""
    skip = {"id", "prompt_id", "sample_id", "chosen_index", "mc_ess"}
    return [k for k, v in records[0].items()
            if k not in skip and isinstance(v, (int, float)) and not isinstance(v, bool)]


def reward_matrix(records, values, source="records"):
    """Stack the rewards of `values` into a float64 array of shape (k, n).

    Raises RecordsError naming a value absent from the records (listing the keys present) or
    the records holding non-finite or non-numeric rewards.
    """
    present = set().union(*(r.keys() for r in records[:1]))
    for value in values:
        missing = [i for i, r in enumerate(records) if value not in r]
        if missing:
            where = "any record" if len(missing) == len(records) else \
                f"{len(missing)} of {len(records)} records (first at position {missing[0]})"
            raise RecordsError(
                f"value {value!r} is missing from {where} of {source}. Reward keys present: "
                f"{reward_keys(records) or sorted(present)}. Add it first (python rewardProcessor.py "
                f"--file_path=... add_reward --value={value}) or choose values that are present.")
    matrix = np.empty((len(values), len(records)), dtype=np.float64)
    for i, value in enumerate(values):
        bad = []
        for j, r in enumerate(records):
            x = r[value]
            ok = isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
            matrix[i, j] = float(x) if ok else np.nan
            if not ok:
                bad.append(record_id(r, j))
        if bad:
            raise RecordsError(
                f"value {value!r} has {len(bad)} non-finite or non-numeric rewards in {source} "
                f"(record ids {bad[:10]}{' ...' if len(bad) > 10 else ''}). Re-score those records "
                "or drop them before solving.")
    return matrix


def prompt_groups(records):
    """Integer group index per record (records sharing a prompt share a group), shape (n,).
    Uses `prompt_id` when present, else the prompt text."""
    keys = [r["prompt_id"] if "prompt_id" in r else r.get("prompt", j) for j, r in enumerate(records)]
    index = {}
    return np.array([index.setdefault(k, len(index)) for k in keys], dtype=np.int64)
