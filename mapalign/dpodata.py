"""Preference data for the DPO baseline: a seeded harmless/helpful mixture of Anthropic HH-RLHF.

    python genDPOdata.py main --harmless_ratio=0.3 --sample_size=2000 --split=train \
        --save_path=results/dpo-mixture-0.3harmless.json
    python genDPOdata.py main --harmless_ratio=0.3 --sample_size=200 --data_source_path=hh/   # local copy

Each example keeps the first turn only: prompt = first Human turn, chosen/rejected = first
Assistant turn of the `chosen`/`rejected` transcripts, each cut to `max_words` words (as the original).
HH-RLHF comes from the hub (`Anthropic/hh-rlhf`, data_dir `harmless-base` / `helpful-base`); offline,
pass `--data_source_path`: a folder laid out like the hub repo (`harmless-base/train.jsonl.gz`, plain
`.jsonl`/`.json` also accepted), a single file when only one source is used, or a dict source -> file.
Local files must have the hub's `chosen` and `rejected` transcript columns.

Fix over the original: per-source counts are rounded so they add up to sample_size (the original
floored weight·size, so 1 − 0.9 of 2000 gave 199 rows instead of 200).
"""
import math
import os

from mapalign import records
from mapalign.errors import InputError, NotFoundError

HUB_DATASET = "Anthropic/hh-rlhf"
SHUFFLE_SEED = 6  # the original's seed, for both the per-source and the final shuffle
HUMAN, ASSISTANT = "Human:", "Assistant:"


class DataNotAvailableError(NotFoundError):
    """Preference data cannot be loaded here; the message names the source and the fix."""


def _first_turns(transcript):
    """(first Human turn, first Assistant turn) of an HH transcript, or None without both markers."""
    h = transcript.find(HUMAN)
    a = transcript.find(ASSISTANT, h + len(HUMAN)) if h >= 0 else -1
    if h < 0 or a < 0:
        return None
    prompt = transcript[h + len(HUMAN):a].strip()
    rest = transcript[a + len(ASSISTANT):]
    nxt = rest.find(HUMAN)
    reply = (rest if nxt < 0 else rest[:nxt]).strip()
    return prompt, reply


def _truncate(text, max_words):
    return " ".join(text.split()[:max_words])


def preprocess_data(examples, max_words=50):
    """Turn a batch of HH-RLHF rows into first-turn DPO examples.

    Args:
        examples: a batch (dict of lists) with `chosen` and `rejected` transcripts.
        max_words: each field is cut to this many whitespace-separated words.
    Returns:
        dict of lists `prompt`, `chosen`, `rejected`; rows lacking a Human or Assistant marker are dropped.

    Note that many examples have chosen == rejected in the first round of dialogue (the transcripts
    differ only later), so the sample size cannot be too small.
    """
    out = {"prompt": [], "chosen": [], "rejected": []}
    for chosen, rejected in zip(examples["chosen"], examples["rejected"]):
        c, r = _first_turns(chosen), _first_turns(rejected)
        if c is None or r is None:
            continue
        out["prompt"].append(_truncate(c[0], max_words))
        out["chosen"].append(_truncate(c[1], max_words))
        out["rejected"].append(_truncate(r[1], max_words))
    return out


def source_counts(data_source, sample_size):
    """Rows to take from each source: weight·sample_size rounded by largest remainder so the counts
    sum to round(Σweights·sample_size). Returns {source: int} for sources with positive weight."""
    weights = {k: float(v) for k, v in data_source.items()}
    bad = {k: v for k, v in weights.items() if not (v >= 0 and math.isfinite(v))}
    if bad:
        raise InputError(f"data_source weights must be finite and >= 0; got {bad}")
    raw = {k: w * int(sample_size) for k, w in weights.items() if w > 0}
    counts = {k: int(math.floor(v + 1e-9)) for k, v in raw.items()}
    total = int(round(sum(raw.values())))
    for k in sorted(raw, key=lambda k: counts[k] - raw[k])[:max(0, total - sum(counts.values()))]:
        counts[k] += 1
    return counts


def data_dir_of(source):
    """HH-RLHF folder of a source name: "harmless" -> "harmless-base"; full names pass through."""
    return source if "-" in source else f"{source}-base"


def _local_file(data_source_path, source, split, n_sources):
    if isinstance(data_source_path, dict):
        if source not in data_source_path:
            raise DataNotAvailableError(f"--data_source_path has no file for source {source!r}; "
                                        f"it names {sorted(data_source_path)}")
        return data_source_path[source]
    if os.path.isfile(data_source_path):
        if n_sources > 1:
            raise DataNotAvailableError(
                f"--data_source_path={data_source_path!r} is one file but {n_sources} sources have positive weight; "
                "pass a folder laid out like the hub (harmless-base/train.jsonl.gz, helpful-base/...) or a dict.")
        return data_source_path
    folder = os.path.join(data_source_path, data_dir_of(source))
    for name in (f"{split}.jsonl.gz", f"{split}.jsonl", f"{split}.json"):
        if os.path.isfile(os.path.join(folder, name)):
            return os.path.join(folder, name)
    raise DataNotAvailableError(f"no {split}.jsonl.gz / {split}.jsonl / {split}.json under {folder!r} "
                                f"(source {source!r}); lay the folder out like {HUB_DATASET} on the hub.")


def load_source(source, split, data_source_path=None):
    """The raw HH-RLHF rows of one source and split (a datasets.Dataset with chosen/rejected)."""
    import datasets
    if data_source_path is not None:
        path = _local_file(data_source_path, source, split, 1)
        if path.endswith(".gz"):
            dataset = datasets.load_dataset("json", data_files=path, split="train")
        else:  # plain .json/.jsonl: read and checked by the record store, so a bad file is named in one line
            dataset = datasets.Dataset.from_list(records.load_records(path, required=("chosen", "rejected")))
        where = path
    else:
        try:
            dataset = datasets.load_dataset(HUB_DATASET, data_dir=data_dir_of(source), split=split)
        except Exception as e:  # offline / not cached: one clear error instead of a hub traceback
            raise DataNotAvailableError(
                f"could not load {HUB_DATASET} (data_dir={data_dir_of(source)!r}, split={split!r}): "
                f"{type(e).__name__}: {str(e)[:200]}. It is not in the local datasets cache and the hub is "
                f"unreachable (HF_HUB_OFFLINE=1 or no network). Fix: download it on a connected machine, or pass "
                f"--data_source_path=<folder with {data_dir_of(source)}/{split}.jsonl.gz>.") from None
        where = f"{HUB_DATASET}/{data_dir_of(source)}"
    missing = {"chosen", "rejected"} - set(dataset.column_names)
    if missing:
        raise DataNotAvailableError(f"{where} lacks columns {sorted(missing)}; HH-RLHF files have `chosen` and "
                                    f"`rejected` transcripts (columns present: {dataset.column_names})")
    return dataset


def gen_mixed_preference_data(data_source, sample_size, split, data_source_path=None, max_words=50,
                              seed=SHUFFLE_SEED):
    """A shuffled mixture of first-turn preference examples.

    Args:
        data_source: {"harmless": p, "helpful": 1 - p} (other HH-RLHF folders, e.g. "helpful-online",
            work too); a source with weight 0 is not loaded.
        sample_size: total rows drawn before preprocessing (rows without markers are then dropped).
        split: "train" or "test".
        data_source_path: local data instead of the hub (see the module docstring).
        max_words: words kept per field.
        seed: shuffle seed (the original's 6) for each source and for the final mixture.
    Returns:
        a datasets.Dataset with columns prompt, chosen, rejected, source.
    """
    import datasets
    if isinstance(data_source, str):
        import json
        data_source = json.loads(data_source)
    counts = source_counts(data_source, sample_size)
    if not counts:
        raise InputError(f"data_source {data_source!r} has no source with positive weight")
    if isinstance(data_source_path, str) and os.path.isfile(data_source_path) and len(counts) > 1:
        _local_file(data_source_path, next(iter(counts)), split, len(counts))  # raises the clear error
    parts = []
    for source, n in counts.items():
        rows = load_source(source, split, data_source_path).shuffle(seed=seed)
        if n > len(rows):
            raise InputError(f"source {source!r} ({split}) has {len(rows)} rows; {n} requested. Lower sample_size.")
        rows = rows.select(range(n))
        part = rows.map(preprocess_data, batched=True, batch_size=100, remove_columns=rows.column_names,
                        fn_kwargs={"max_words": max_words})
        parts.append(part.add_column("source", [source] * len(part)))
    return datasets.concatenate_datasets(parts).shuffle(seed=seed)


def main(harmless_ratio=0.5, sample_size=2000, split="train", save_path=None, data_source_path=None,
         max_words=50, seed=SHUFFLE_SEED):
    """Write the harmless/helpful mixture to a JSON file (array of {prompt, chosen, rejected, source}).

    Args:
        harmless_ratio: share p of harmless-base rows; helpful-base gets 1 - p.
        sample_size, split, data_source_path, max_words, seed: as gen_mixed_preference_data.
        save_path: output file; default results/hh-mixture-{sample_size}sample-{p}harmless-{split}.json.
    Returns:
        the path written.
    """
    p = float(harmless_ratio)
    if not 0.0 <= p <= 1.0:
        raise InputError(f"--harmless_ratio must lie in [0, 1]; got {harmless_ratio!r}")
    data = gen_mixed_preference_data({"harmless": p, "helpful": 1.0 - p}, sample_size, split,
                                     data_source_path=data_source_path, max_words=max_words, seed=seed)
    save_path = save_path or os.path.join("results", f"hh-mixture-{sample_size}sample-{p}harmless-{split}.json")
    records.save_json_atomic(data.to_list(), save_path)
    records.save_metadata(save_path, {"harmless_ratio": p, "sample_size": int(sample_size), "split": split,
                                      "seed": int(seed), "max_words": int(max_words), "rows": len(data),
                                      "data_source_path": data_source_path})
    print(f"wrote {len(data)} examples to {save_path}")
    return save_path
