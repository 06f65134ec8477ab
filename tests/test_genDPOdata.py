"""genDPOdata.py: first-turn extraction, seeded harmless/helpful mixtures from local HH-RLHF-shaped files."""
import gzip
import json
import os

import pytest

from mapalign import dpodata as genDPOdata
from mapalign import records


def transcript(human, assistant, later=""):
    return f"\n\nHuman: {human}\n\nAssistant: {assistant}" + (f"\n\nHuman: {later}\n\nAssistant: ok" if later else "")


def write_source(folder, source, n, split="train", gz=True):
    """A local file in the hub layout ({source}-base/{split}.jsonl.gz) with n rows tagged by source."""
    os.makedirs(os.path.join(folder, f"{source}-base"), exist_ok=True)
    rows = [{"chosen": transcript(f"{source} question {i}?", f"{source} good answer {i}", "more"),
             "rejected": transcript(f"{source} question {i}?", f"{source} bad answer {i}")} for i in range(n)]
    path = os.path.join(folder, f"{source}-base", f"{split}.jsonl" + (".gz" if gz else ""))
    opener = gzip.open if gz else open
    with opener(path, "wt", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    return path


def test_preprocess_first_turns_truncation_and_drops():
    long_answer = " ".join(f"w{i}" for i in range(80))
    batch = {"chosen": [transcript("Hi  there?", long_answer, "next turn"), "no markers at all",
                        transcript("Q", "A")],
             "rejected": [transcript("Hi  there?", "short no"), transcript("x", "y"), "\n\nHuman: only human"]}
    out = genDPOdata.preprocess_data(batch, max_words=50)
    assert out["prompt"] == ["Hi there?"]
    assert out["chosen"] == [" ".join(f"w{i}" for i in range(50))]
    assert out["rejected"] == ["short no"]
    # the Assistant turn stops before the next Human turn
    assert genDPOdata.preprocess_data({"chosen": [transcript("a", "b c", "d")], "rejected": [transcript("a", "e")]},
                                      max_words=3) == {"prompt": ["a"], "chosen": ["b c"], "rejected": ["e"]}


def test_source_counts_fix_the_floor_artefact():
    assert genDPOdata.source_counts({"harmless": 0.1, "helpful": 1 - 0.1}, 2000) == {"harmless": 200, "helpful": 1800}
    assert genDPOdata.source_counts({"harmless": 1 - 0.9, "helpful": 0.9}, 2000) == {"harmless": 200, "helpful": 1800}
    counts = genDPOdata.source_counts({"a": 1 / 3, "b": 1 / 3, "c": 1 / 3}, 100)
    assert sum(counts.values()) == 100 and sorted(counts.values()) == [33, 33, 34]
    assert genDPOdata.source_counts({"harmless": 0.0, "helpful": 1.0}, 10) == {"helpful": 10}
    with pytest.raises(ValueError):
        genDPOdata.source_counts({"harmless": -0.1}, 10)


def test_mixture_is_seeded_and_proportioned(tmp_path):
    write_source(str(tmp_path), "harmless", 40)
    write_source(str(tmp_path), "helpful", 40, gz=False)
    data = genDPOdata.gen_mixed_preference_data({"harmless": 0.3, "helpful": 0.7}, 20, "train",
                                                data_source_path=str(tmp_path))
    assert len(data) == 20 and sorted(data.column_names) == ["chosen", "prompt", "rejected", "source"]
    assert data["source"].count("harmless") == 6
    assert all(r["chosen"].startswith(r["source"]) and "good" in r["chosen"] and "bad" in r["rejected"]
               for r in data.to_list())
    again = genDPOdata.gen_mixed_preference_data({"harmless": 0.3, "helpful": 0.7}, 20, "train",
                                                 data_source_path=str(tmp_path))
    assert again.to_list() == data.to_list()
    other = genDPOdata.gen_mixed_preference_data({"harmless": 0.3, "helpful": 0.7}, 20, "train",
                                                 data_source_path=str(tmp_path), seed=7)
    assert other["prompt"] != data["prompt"]


def test_single_file_and_clear_errors(tmp_path):
    path = write_source(str(tmp_path), "harmless", 10)
    data = genDPOdata.gen_mixed_preference_data({"harmless": 1.0, "helpful": 0.0}, 5, "train", data_source_path=path)
    assert len(data) == 5
    with pytest.raises(genDPOdata.DataNotAvailableError, match="one file but 2 sources"):
        genDPOdata.gen_mixed_preference_data({"harmless": 0.5, "helpful": 0.5}, 4, "train", data_source_path=path)
    with pytest.raises(genDPOdata.DataNotAvailableError, match="helpful-base"):
        genDPOdata.gen_mixed_preference_data({"harmless": 0.5, "helpful": 0.5}, 4, "train",
                                             data_source_path=str(tmp_path))
    with pytest.raises(ValueError, match="rows; 50 requested"):
        genDPOdata.gen_mixed_preference_data({"harmless": 1.0}, 50, "train", data_source_path=path)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"text": "x"}) + "\n")
    with pytest.raises(records.RecordsError, match=r"record 0 of .*bad\.jsonl' has no 'chosen'"):
        genDPOdata.gen_mixed_preference_data({"harmless": 1.0}, 1, "train", data_source_path=str(bad))


def test_hub_error_is_clear_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(genDPOdata.DataNotAvailableError, match="data_source_path"):
        genDPOdata.load_source("harmless", "train")


def test_main_writes_json_with_metadata(tmp_path):
    write_source(str(tmp_path), "harmless", 10)
    write_source(str(tmp_path), "helpful", 10)
    out = genDPOdata.main(harmless_ratio=0.5, sample_size=8, data_source_path=str(tmp_path),
                          save_path=str(tmp_path / "mix.json"))
    rows = json.loads(open(out).read())
    assert len(rows) == 8 and json.loads(open(str(tmp_path / "mix.meta.json")).read())["seed"] == 6
