"""Merging reward temp files (by id, exact names only, all-or-nothing) and generation shards (ordered,
no gaps or overlaps)."""
import json
import os

import pytest

from mapalign import records
from mapalign.merging import MergeProcessor, find_reward_temp_files, temp_reward_path
from mapalign.records import RecordsError


def _recs(n=4, ids=True):
    out = []
    for i in range(n):
        r = {"prompt": f"prompt {i}", "generated": f"prompt {i} answer {i}", "continuation": f"answer {i}"}
        if ids:
            r.update({"id": f"{i}-0", "prompt_id": i, "sample_id": 0})
        out.append(r)
    return out


def _temp(file_path, value, recs, scores, ids=True):
    entries = [dict({"id": records.record_id(r, j)} if ids else {}, prompt=r["prompt"], **{value: s})
               for j, (r, s) in enumerate(zip(recs, scores))]
    path = temp_reward_path(file_path, value)
    records.save_json_atomic(entries, path)
    return path


def _read(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def test_merge_by_id_adds_columns_and_removes_only_merged_files(tmp_path):
    path = str(tmp_path / "m-data.json")
    recs = _recs()
    records.save_json_atomic(recs, path)
    records.save_metadata(path, {"model": "m", "seed": 3})
    # temp entries in another order: matching is by id, not position
    a = _temp(path, "sentiment", recs, [0.1, 0.2, 0.3, 0.4])
    entries = _read(a)
    records.save_json_atomic(entries[::-1], a)
    records.save_metadata(a, {"value": "sentiment", "records": 4})
    b = _temp(path, "length", recs, [1, 2, 3, 4])
    # another dataset whose name starts with this base: the original merged and deleted it
    other = str(tmp_path / "temp" / "m-data_lam=1.000_val=all_temp_humor.json")
    records.save_json_atomic([{"id": "0-0", "humor": 9.0}], other)
    assert set(find_reward_temp_files(path)) == {"sentiment", "length"}

    out = MergeProcessor().merge_added_rewards(path)
    assert out == path
    merged = _read(path)
    assert [r["sentiment"] for r in merged] == [0.1, 0.2, 0.3, 0.4]
    assert [r["length"] for r in merged] == [1.0, 2.0, 3.0, 4.0]
    assert all("humor" not in r for r in merged)
    assert not os.path.exists(a) and not os.path.exists(b) and not os.path.exists(records.metadata_path(a))
    assert os.path.exists(other)
    meta = records.load_metadata(path)
    assert meta["seed"] == 3 and meta["rewards"]["sentiment"]["records"] == 4 and "length" in meta["rewards"]
    # nothing left: a second merge is a no-op that says so
    assert MergeProcessor().merge_added_rewards(path) == path
    assert _read(path) == merged


def test_incomplete_or_mismatched_temp_files_stop_the_whole_merge(tmp_path):
    path = str(tmp_path / "m-data.json")
    recs = _recs()
    records.save_json_atomic(recs, path)
    before = open(path).read()
    good = _temp(path, "length", recs, [1, 2, 3, 4])
    partial = _temp(path, "sentiment", recs[:2], [0.1, 0.2])
    with pytest.raises(RecordsError, match=r"(?s)sentiment.*2 of 4 records have no score.*interrupted"):
        MergeProcessor().merge_added_rewards(path)
    assert open(path).read() == before and os.path.exists(good) and os.path.exists(partial)
    # only the finished value can be merged explicitly
    MergeProcessor().merge_added_rewards(path, values="length")
    assert [r["length"] for r in _read(path)] == [1, 2, 3, 4] and os.path.exists(partial)

    wrong = _recs()
    wrong[2]["prompt"] = "a different prompt"
    _temp(path, "sentiment", wrong, [0.1, 0.2, 0.3, 0.4])
    with pytest.raises(RecordsError, match="has prompt 'prompt 2' but the temp entry has 'a different prompt'"):
        MergeProcessor().merge_added_rewards(path)
    extra = _recs(5)
    _temp(path, "sentiment", extra, [0.1, 0.2, 0.3, 0.4, 0.5])
    with pytest.raises(RecordsError, match="not in the"):
        MergeProcessor().merge_added_rewards(path)
    _temp(path, "sentiment", recs, [0.1, None, 0.3, 0.4])
    with pytest.raises(RecordsError, match="lack a finite number"):
        MergeProcessor().merge_added_rewards(path)
    with open(temp_reward_path(path, "sentiment"), "w") as f:
        f.write('[{"id": "0-0", ')
    with pytest.raises(RecordsError, match="not valid JSON"):
        MergeProcessor().merge_added_rewards(path)
    with pytest.raises(RecordsError, match="no reward temp file for \\['humor'\\]"):
        MergeProcessor().merge_added_rewards(path, values="humor")
    with pytest.raises(RecordsError, match="not found"):
        MergeProcessor().merge_added_rewards(str(tmp_path / "missing.json"))


def test_files_without_ids_pair_by_position_only_when_prompts_agree(tmp_path):
    path = str(tmp_path / "opt-data.json")
    recs = _recs(3, ids=False)
    records.save_json_atomic(recs, path)
    # an original-format temp file: a full copy of the records with the value filled in, no ids
    full_copy = [dict(r, humor=float(i)) for i, r in enumerate(recs)]
    records.save_json_atomic(full_copy, temp_reward_path(path, "humor"))
    target = MergeProcessor().merge_added_rewards(path, save_to_temp_folder=True)
    assert target == str(tmp_path / "temp" / "opt-data.json")
    assert [r["humor"] for r in _read(target)] == [0.0, 1.0, 2.0]
    assert _read(path) == recs  # the original is untouched in save_to_temp_folder mode

    records.save_json_atomic(full_copy[:2], temp_reward_path(path, "humor"))
    with pytest.raises(RecordsError, match="position pairing needs equal lengths"):
        MergeProcessor().merge_added_rewards(path)
    shuffled = [full_copy[1], full_copy[0], full_copy[2]]
    records.save_json_atomic(shuffled, temp_reward_path(path, "humor"))
    with pytest.raises(RecordsError, match="has prompt 'prompt 0' but the temp entry has 'prompt 1'"):
        MergeProcessor().merge_added_rewards(path)


def _shard(folder, prefix, start, end, meta=None):
    recs = [{"prompt": f"p{i}", "generated": f"p{i} x", "continuation": "x", "id": f"{i}-0", "prompt_id": i,
             "sample_id": 0} for i in range(start, end)]
    path = os.path.join(folder, f"{prefix}_{start}to{end}.json")
    records.save_json_atomic(recs, path)
    records.save_metadata(path, meta or {"seed": 0, "counts": {"new_tokens": 10 * (end - start)},
                                         "fingerprint": {"seed": 0, "start_index": start, "end_index": end}})
    return path


def test_shards_merge_in_start_order_and_gaps_or_overlaps_are_refused(tmp_path):
    temp = str(tmp_path / "temp")
    os.makedirs(temp)
    for start, end in [(10, 15), (0, 5), (5, 10)]:  # written out of order
        _shard(temp, "m-data", start, end)
    _shard(temp, "m-data_lam=1.000_val=all", 0, 5)  # another dataset's shard, not matched below
    open(os.path.join(temp, "m-data_15to20.json.partial"), "w").write("{}")  # a checkpoint: ignored
    with pytest.raises(RecordsError, match="several datasets"):
        MergeProcessor().merge_gendata_bypattern(os.path.join(temp, "*_*to*.json"))

    out = MergeProcessor().merge_gendata_bypattern(os.path.join(temp, "m-data_*to*.json"))
    assert out == str(tmp_path / "m-data.json")
    merged = _read(out)
    assert [r["prompt_id"] for r in merged] == list(range(15))
    meta = records.load_metadata(out)
    assert meta["counts"]["records"] == 15 and meta["counts"]["new_tokens"] == 150
    assert meta["fingerprint"] == {"seed": 0, "start_index": 0, "end_index": 15}
    assert [s["start_index"] for s in meta["shards"]] == [0, 5, 10]
    assert sorted(os.listdir(temp)) == ["m-data_15to20.json.partial", "m-data_lam=1.000_val=all_0to5.json",
                                        "m-data_lam=1.000_val=all_0to5.meta.json"]

    for start, end in [(0, 5), (7, 10)]:
        _shard(temp, "gap", start, end)
    with pytest.raises(RecordsError, match=r"gap: prompts 5\.\.6 are in no shard.*--start_index=5 --end_index=7"):
        MergeProcessor().merge_gendata_bypattern(os.path.join(temp, "gap_*to*.json"))
    assert os.path.exists(os.path.join(temp, "gap_0to5.json"))
    for start, end in [(0, 5), (4, 10)]:
        _shard(temp, "over", start, end)
    with pytest.raises(RecordsError, match="overlaps"):
        MergeProcessor().merge_gendata_bypattern(os.path.join(temp, "over_*to*.json"))
    _shard(temp, "seeds", 0, 5)
    _shard(temp, "seeds", 5, 10, meta={"fingerprint": {"seed": 1, "start_index": 5, "end_index": 10}})
    with pytest.raises(RecordsError, match="other settings"):
        MergeProcessor().merge_gendata_bypattern(os.path.join(temp, "seeds_*to*.json"))
    with pytest.raises(RecordsError, match="no shard files match"):
        MergeProcessor().merge_gendata_bypattern(os.path.join(temp, "nothing_*to*.json"))


def test_shard_that_does_not_cover_its_range_and_existing_target(tmp_path):
    temp = str(tmp_path / "temp")
    os.makedirs(temp)
    path = _shard(temp, "m", 0, 4)
    records.save_json_atomic(_read(path)[:3], path)  # a truncated shard
    with pytest.raises(RecordsError, match=r"does not cover prompts 0\.\.3"):
        MergeProcessor().merge_gendata_bypattern(os.path.join(temp, "m_*to*.json"))
    _shard(temp, "m", 0, 4)
    records.save_json_atomic([{"prompt": "old"}], str(tmp_path / "m.json"))
    with pytest.raises(FileExistsError, match="overwrite"):
        MergeProcessor().merge_gendata_bypattern(os.path.join(temp, "m_*to*.json"))
    out = MergeProcessor().merge_gendata_bypattern(os.path.join(temp, "m_*to*.json"), overwrite=True, keep_shards=True)
    assert len(_read(out)) == 4 and os.path.exists(path)


def test_value_names_with_slashes_round_trip_through_temp_names(tmp_path):
    path = str(tmp_path / "run.json")
    name = "rm:models/rm 50%/helpfulness"
    temp = temp_reward_path(path, name)
    assert os.path.dirname(temp) == str(tmp_path / "temp")
    os.makedirs(os.path.dirname(temp))
    open(temp, "w").write("[]")
    assert find_reward_temp_files(path) == {name: temp}
    assert temp_reward_path(path, "gpt2-helpful").endswith("run_temp_gpt2-helpful.json")


@pytest.mark.parametrize("ext", [".json", ".jsonl"])
def test_merge_keeps_the_results_files_format(tmp_path, ext):
    """Defect 2: merging into a .jsonl file wrote a JSON array into it (the next load failed)."""
    path = str(tmp_path / f"m-data{ext}")
    recs = _recs()
    records.save_records(recs, path)
    temp = temp_reward_path(path, "length")
    assert temp.endswith("_temp_length" + ext)
    records.save_records([{"id": r["id"], "prompt": r["prompt"], "length": float(i)} for i, r in enumerate(recs)],
                         temp)
    assert MergeProcessor().merge_added_rewards(path) == path
    merged = records.load_records(path)
    assert [r["length"] for r in merged] == [0.0, 1.0, 2.0, 3.0]
    text = open(path, encoding="utf-8").read()
    assert text == records.dumps_records(merged, records.results_format(path))
    assert text.startswith("{") if ext == ".jsonl" else text.startswith("[\n    {")
    assert records.metadata_path(path) == str(tmp_path / "m-data.meta.json")
