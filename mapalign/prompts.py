"""Prompt sources: one function, `load_prompts(data_name, ...)`, turns a data name into a list of prompts.

Sources (`data_name`):

    builtin             the offline set shipped in data/builtin_prompts.json (231 first-turn prompts in
                        the spirit of Anthropic HH: everyday requests, advice, and risky asks a harmless
                        assistant should decline). Needs nothing but this repository.
    Anthropic-harmless  the original MAP prompts: Hugging Face `Anthropic/hh-rlhf`, data_dir harmless-base,
                        split test (2312 rows); the prompt is the text between the first "Human: " and the
                        first "Assistant:" of `chosen`, stripped. Needs the hub or a cached copy.
    Imdb                the original sentiment prompts: Hugging Face `imdb` split train, reviews longer than
                        30 characters, shuffled with `seed` (the split is sorted by label: the original's
                        first 1000 rows were all negative), the first 1000 kept, each cut to a seeded random
                        20-30 characters and back to the last space. Same seed, same prompts.
    <file>              a local .json (array of strings or objects, or {"prompts": [...]}), .jsonl, .csv or
                        .txt (one prompt per line) file; objects/rows take the prompt from `prompt_column`
                        (default "prompt").
    <folder>            a dataset saved with `datasets.Dataset.save_to_disk`, or a folder in the hub layout
                        (loaded with `datasets.load_dataset(folder)`), column `prompt_column`.
    <org/name>          any Hugging Face dataset with a text column: `prompt_column` (default "prompt"),
                        `split` (default "train").

`dataset_path` points the two named HF sources at a local copy instead of the hub id (a folder in the
hub layout, e.g. `hh/harmless-base/test.jsonl`, or a save_to_disk folder). A prompt's position in the
returned list is its `prompt_id` in results files.
"""
import csv
import json
import os
import random
import re

from mapalign.errors import InputError

BUILTIN_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "builtin_prompts.json")
ANTHROPIC_REPO, ANTHROPIC_DIR, ANTHROPIC_SPLIT = "Anthropic/hh-rlhf", "harmless-base", "test"
IMDB_REPO, IMDB_SPLIT, IMDB_COUNT = "imdb", "train", 1000
IMDB_MIN_CHARS, IMDB_CUT = 30, (20, 30)
LOCAL_SUFFIXES = (".json", ".jsonl", ".csv", ".txt")


class PromptsError(InputError):
    """A prompt source cannot be read; the message names the source and the fix."""


def load_prompts(data_name, seed=0, prompt_column=None, split=None, dataset_path=None, cache_dir=None):
    """Load the prompts of a source (see the module docstring for the accepted `data_name`s).

    Args:
        data_name: "builtin" | "Anthropic-harmless" | "Imdb" | a local file or folder | a hub dataset id.
        seed: seeds the Imdb shuffle and cut lengths (other sources are deterministic and ignore it).
        prompt_column: column holding the prompt for files and generic datasets (default "prompt").
        split: dataset split for hub/folder datasets (default: "test" for Anthropic-harmless, "train"
            otherwise).
        dataset_path: a local copy to read instead of the hub id of Anthropic-harmless or Imdb.
        cache_dir: the `datasets` cache folder (default: the library's).
    Returns:
        list of prompt strings (duplicates kept, source order; empty prompts are dropped with a note).
    Raises:
        PromptsError naming the source and the fix.
    """
    if not isinstance(data_name, str) or not data_name.strip():
        raise PromptsError(f"data_name must be a non-empty string; got {data_name!r}. Use 'builtin', "
                           "'Anthropic-harmless', 'Imdb', a local .json/.jsonl/.csv/.txt file or a dataset id.")
    if data_name == "builtin":
        prompts = builtin_prompts()
    elif data_name == "Anthropic-harmless":
        rows = _load_hf(dataset_path or ANTHROPIC_REPO, split or ANTHROPIC_SPLIT, cache_dir,
                        data_dir=None if dataset_path and _is_saved_dataset(dataset_path) else ANTHROPIC_DIR,
                        what="the Anthropic-harmless prompts")
        prompts = [first_human_turn(text) for text in _column(rows, "chosen", "Anthropic/hh-rlhf")]
    elif data_name == "Imdb":
        rows = _load_hf(dataset_path or IMDB_REPO, split or IMDB_SPLIT, cache_dir, what="the Imdb prompts")
        prompts = imdb_prompts(_column(rows, "text", "imdb"), seed=seed)
    elif os.path.isfile(data_name):
        prompts = _read_local_file(data_name, prompt_column or "prompt")
    elif data_name.lower().endswith(LOCAL_SUFFIXES):
        raise PromptsError(f"prompt file not found: {data_name!r}. Check the path, or use --data_name=builtin.")
    else:
        rows = _load_hf(data_name, split or "train", cache_dir, what=f"dataset {data_name!r}")
        prompts = _column(rows, prompt_column or "prompt", data_name)
    return _clean(prompts, data_name)


def builtin_prompts(path=BUILTIN_FILE):
    """The prompts of the shipped offline set, in file order (categories are interleaved, so any prefix
    mixes everyday, advice and risky prompts)."""
    with open(path, encoding="utf-8") as f:
        return [item["prompt"] for item in json.load(f)["prompts"]]


def first_human_turn(dialogue):
    """The first human turn of an HH-RLHF transcript: text between the first "Human: " and the first
    "Assistant:" after it, stripped. Raises PromptsError when the markers are missing (the original's
    guard never fired and returned a wrong slice)."""
    start = dialogue.find("Human: ")
    if start < 0:
        raise PromptsError(f"HH-RLHF transcript without 'Human: ': {dialogue[:80]!r}")
    start += len("Human: ")
    end = dialogue.find("Assistant:", start)
    if end < 0:
        raise PromptsError(f"HH-RLHF transcript without 'Assistant:' after the first human turn: {dialogue[:80]!r}")
    return dialogue[start:end].strip()


def cut_to_word_boundary(text, length):
    """`text` cut to `length` characters, then back to the last space inside them (a hard cut when
    there is none), as the original LengthSampler prompts."""
    head = text[:length]
    space = head.rfind(" ")
    return head[:space] if space > 0 else head


def imdb_prompts(reviews, seed=0, count=IMDB_COUNT):
    """Seeded Imdb prompts from the review texts: keep reviews longer than 30 characters, shuffle with
    `seed`, keep the first `count`, cut each to a random 20-30 characters back to a word boundary."""
    rng = random.Random(seed)
    kept = [r for r in reviews if len(r) > IMDB_MIN_CHARS]
    rng.shuffle(kept)
    kept = kept[:count]
    return [cut_to_word_boundary(r, rng.randint(*IMDB_CUT)).strip() for r in kept]


def data_tag(data_name):
    """The data part of result file names: the data name itself for named sources ("Anthropic-harmless"),
    the file stem for a local file or folder ("path/to/qs.csv" -> "qs"), and the hub id with "/"
    replaced for hub datasets ("org/name" -> "org_name"); characters other than letters, digits, ".",
    "_" and "-" become "_"."""
    if os.path.exists(data_name):
        data_name = os.path.splitext(os.path.basename(os.path.normpath(data_name)))[0]
    return re.sub(r"[^A-Za-z0-9._-]", "_", data_name.strip().strip("/")) or "data"


# ---------------------------------------------------------------------------------------------

def _clean(prompts, source):
    bad = [i for i, p in enumerate(prompts) if not isinstance(p, str)]
    if bad:
        raise PromptsError(f"prompt source {source!r} holds {len(bad)} non-text prompts (first at row {bad[0]}: "
                           f"{prompts[bad[0]]!r}); choose a text column with --prompt_column.")
    kept = [p for p in prompts if p.strip()]
    if not kept:
        raise PromptsError(f"prompt source {source!r} holds no non-empty prompts.")
    if len(kept) < len(prompts):
        print(f"prompts: dropped {len(prompts) - len(kept)} empty prompts from {source!r}")
    return kept


def _is_saved_dataset(path):
    return os.path.isdir(path) and (os.path.isfile(os.path.join(path, "dataset_dict.json"))
                                    or os.path.isfile(os.path.join(path, "state.json")))


def _load_hf(name, split, cache_dir, data_dir=None, what="dataset"):
    """Rows of one split of a hub dataset, a hub-layout folder, or a save_to_disk folder."""
    import datasets
    if _is_saved_dataset(name):
        loaded = datasets.load_from_disk(name)
        if isinstance(loaded, datasets.DatasetDict):
            if split not in loaded:
                raise PromptsError(f"saved dataset {name!r} has no split {split!r}; splits: {list(loaded)}. "
                                   "Pass --split=<one of them>.")
            loaded = loaded[split]
        return loaded
    try:
        return datasets.load_dataset(name, data_dir=data_dir, split=split, cache_dir=cache_dir)
    except (ConnectionError, OSError, FileNotFoundError, ValueError) as e:
        offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
        where = f"{name!r}" + (f" (data_dir={data_dir!r}, split={split!r})" if data_dir else f" (split={split!r})")
        hint = ("the hub is offline (HF_HUB_OFFLINE=1) and it is not in the local datasets cache. "
                if offline else "")
        raise PromptsError(
            f"could not load {what} from {where}: {hint}{type(e).__name__}: {str(e)[:300]}. Fixes: run once with "
            "network access (HF_HUB_OFFLINE=0) to cache it, pass a local copy with --dataset_path=FOLDER (hub "
            "layout or save_to_disk), or use the offline set --data_name=builtin.") from None


def _column(rows, column, source):
    names = list(rows.column_names) if hasattr(rows, "column_names") else []
    if column not in names:
        raise PromptsError(f"dataset {source!r} has no column {column!r}; columns: {names}. "
                           "Pass --prompt_column=<one of them>.")
    return list(rows[column])


def _read_local_file(path, column):
    """Prompts from a local .json/.jsonl/.csv/.txt file (see the module docstring)."""
    suffix = os.path.splitext(path)[1].lower()
    if suffix not in LOCAL_SUFFIXES:
        raise PromptsError(f"prompt file {path!r} has an unsupported extension {suffix!r}; use one of "
                           f"{LOCAL_SUFFIXES} (or a dataset folder).")
    with open(path, encoding="utf-8") as f:
        text = f.read()
    if suffix == ".txt":
        return [line.strip() for line in text.splitlines()]
    if suffix == ".csv":
        reader = csv.DictReader(text.splitlines())
        if column not in (reader.fieldnames or []):
            raise PromptsError(f"CSV file {path!r} has no column {column!r}; columns: {reader.fieldnames}. "
                               "Pass --prompt_column=<one of them>.")
        return [row[column] for row in reader]
    try:
        if suffix == ".jsonl":
            items = [json.loads(line) for line in text.splitlines() if line.strip()]
        else:
            items = json.loads(text)
    except json.JSONDecodeError as e:
        raise PromptsError(f"prompt file {path!r} is not valid JSON (line {e.lineno}, column {e.colno}: "
                           f"{e.msg}).") from None
    if isinstance(items, dict) and isinstance(items.get("prompts"), list):
        items = items["prompts"]
    if not isinstance(items, list):
        raise PromptsError(f"prompt file {path!r} must hold a JSON array of prompts (strings or objects) or "
                           "an object with a 'prompts' array.")
    prompts = []
    for i, item in enumerate(items):
        if isinstance(item, dict):
            if column not in item:
                raise PromptsError(f"row {i} of {path!r} has no key {column!r}; keys: {sorted(item)}. "
                                   "Pass --prompt_column=<one of them>.")
            item = item[column]
        prompts.append(item)
    return prompts
