"""records.py: validation errors name the file and the record, writes keep the format (byte-identical for
original MAP files), sidecar errors name the sidecar, and the Checkpoint journal protocol."""
import json
import os

import pytest

from mapalign import records
from conftest import LLAMA_FILE, OPT_FILE, needs_reference
from mapalign.records import Checkpoint, CheckpointMismatch, RecordsError

RECS = [{"prompt": "p0", "generated": "p0 a", "id": "0-0", "humor": 0.5},
        {"prompt": "p1", "generated": "p1 é", "id": "1-0", "humor": -1.25}]


# --------------------------------------------------------------------------------------------
# formats and round trips

@needs_reference
@pytest.mark.parametrize("source", [LLAMA_FILE, OPT_FILE])
def test_original_map_files_round_trip_byte_identical(tmp_path, source):
    out = str(tmp_path / "copy.json")
    records.save_records(records.load_records(source), out)
    with open(source, "rb") as a, open(out, "rb") as b:
        assert a.read() == b.read()


@pytest.mark.parametrize("name", ["x.json", "x.jsonl"])
def test_save_records_keeps_the_format_and_round_trips(tmp_path, name):
    path = str(tmp_path / name)
    records.save_records(RECS, path)
    text = open(path, encoding="utf-8").read()
    if name.endswith(".jsonl"):
        assert text.splitlines()[1] == json.dumps(RECS[1], ensure_ascii=False)
    else:
        assert text.startswith("[\n    {\n        \"prompt\"") and "\\u00e9" in text  # ASCII escapes, as json.dump
    assert records.load_records(path) == RECS
    before = open(path, "rb").read()
    records.save_records(records.load_records(path), path)
    assert open(path, "rb").read() == before
    assert records.metadata_path(path) == str(tmp_path / "x.meta.json")


# --------------------------------------------------------------------------------------------
# every load error names the file (and the record)

BAD = {
    "truncated": ('[{"prompt": "a", "humor": 1.0}, {"prompt": "b", "hu', r"not valid JSON.*line 1, column"),
    "not_a_list": ('{"prompt": "a"}', r"must hold a JSON array"),
    "record_not_object": ('[{"prompt": "a"}, 3]', r"record 1 of .* is a int"),
    "prompt_not_string": ('[{"prompt": 5}]', r"record 0 of .*'prompt' must be a string"),
    "reward_string": ('[{"prompt": "a", "humor": 1.0}, {"prompt": "b", "id": "x", "humor": "high"}]',
                      r"record 1 \(id 'x'\) of .*'humor' is a str .* but a number in record 0"),
    "reward_bool": ('[{"prompt": "a", "humor": true}, {"prompt": "b", "humor": 1.0}]', r"record 1 .*'humor'"),
    "nan": ('[{"prompt": "a", "humor": 1.0}, {"prompt": "b", "id": "7-0", "humor": NaN}]',
            r"record 1 \(id '7-0'\) of .*'humor' is nan \(not finite\)"),
    "inf": ('[{"prompt": "a", "humor": -Infinity}]', r"record 0 of .*'humor' is -inf"),
    "duplicate_ids": ('[{"prompt": "a", "id": "0-0"}, {"prompt": "b", "id": "0-0"}]',
                      r"records 0 and 1 have the same id '0-0'"),
    "missing_prompt": ('[{"prompt": "a"}, {"generated": "b"}]', r"record 1 of .* has no 'prompt'"),
    "empty": ("", r"results file is empty"),
    "empty_list": ("[]", r"holds no records"),
    "bom": ('\ufeff[{"prompt": "a"}]', r"byte-order mark"),
    "bad_prompt_id": ('[{"prompt": "a", "prompt_id": "3"}]', r"'prompt_id' must be an integer"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_load_errors_name_the_file_and_record(tmp_path, case):
    text, pattern = BAD[case]
    path = str(tmp_path / "bad.json")
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    with pytest.raises(RecordsError, match=pattern) as info:
        records.load_records(path)
    assert path in str(info.value) and "\n" not in str(info.value)


def test_jsonl_error_names_the_line_and_record(tmp_path):
    path = str(tmp_path / "x.jsonl")
    with open(path, "w", encoding="utf-8") as f:
        f.write('{"prompt": "a"}\n{"prompt": "b"\n')
    with pytest.raises(RecordsError, match=r"x.jsonl' line 2 \(record 1\) is not valid JSON"):
        records.load_records(path)


def test_directory_and_missing_file(tmp_path):
    with pytest.raises(RecordsError, match="is a directory"):
        records.load_records(str(tmp_path))
    with pytest.raises(RecordsError, match="not found"):
        records.load_records(str(tmp_path / "none.json"))


def test_corrupt_sidecar_error_names_the_sidecar(tmp_path):
    path = str(tmp_path / "x.json")
    records.save_records(RECS, path)
    with open(records.metadata_path(path), "w") as f:
        f.write('{"model": ')
    with pytest.raises(RecordsError, match=r"metadata sidecar '.*x\.meta\.json' is not valid JSON"):
        records.load_metadata(path)
    with open(records.metadata_path(path), "w") as f:
        f.write('[1]')
    with pytest.raises(RecordsError, match="must hold a JSON object"):
        records.load_metadata(path)


# --------------------------------------------------------------------------------------------
# Checkpoint

FP = {"model": {"kind": "local", "files_sha256": "ab"}, "seed": 0, "sampling": {"top_k": 50, "temperature": 1.0}}


def _run(path, fp, batches, kill_after=None, overwrite=False):
    """Journal `batches` (lists of records) skipping what is done; stop (no finalize) after kill_after."""
    with Checkpoint(path, fp, overwrite=overwrite) as ckpt:
        if ckpt.complete:
            return ckpt
        flat = [r for b in batches for r in b]
        assert ckpt.done == flat[:len(ckpt.done)]
        n = len(ckpt.done)
        for i, batch in enumerate(batches):
            start = sum(len(b) for b in batches[:i])
            if start < n:
                continue
            ckpt.append(batch, state={"batches": i + 1})
            if kill_after is not None and i + 1 == kill_after:
                return ckpt
        ckpt.finalize(metadata={"kind": "test"})
        return ckpt


BATCHES = [[{"prompt": f"p{i}", "id": f"{i}-0", "x": i * 0.5}] for i in range(5)]


@pytest.mark.parametrize("name", ["out.json", "out.jsonl"])
def test_checkpoint_resume_gives_the_uninterrupted_output(tmp_path, name):
    whole = str(tmp_path / "a" / name)
    _run(whole, FP, BATCHES)
    assert not os.path.exists(records.journal_path(whole))
    assert records.load_metadata(whole)["fingerprint"] == FP
    path = str(tmp_path / "b" / name)
    _run(path, FP, BATCHES, kill_after=2)
    assert not os.path.exists(path) and os.path.exists(records.journal_path(path))
    with Checkpoint(path, FP) as ckpt:
        assert ckpt.resumed and ckpt.done == BATCHES[0] + BATCHES[1] and ckpt.state == {"batches": 2}
    _run(path, FP, BATCHES)
    assert open(path, "rb").read() == open(whole, "rb").read()
    # a finished output with this fingerprint: nothing to do
    assert _run(path, FP, BATCHES).complete


def test_torn_last_line_is_dropped_and_appends_continue_cleanly(tmp_path):
    path = str(tmp_path / "out.json")
    _run(path, FP, BATCHES, kill_after=3)
    journal = records.journal_path(path)
    with open(journal, "ab") as f:
        f.write(b'{"records": [{"prompt": "p3", "id"')  # killed mid-write
    with Checkpoint(path, FP) as ckpt:
        assert len(ckpt.done) == 3
    _run(path, FP, BATCHES)
    assert records.load_records(path) == [r for b in BATCHES for r in b]


def test_corrupt_middle_line_names_journal_and_line(tmp_path):
    path = str(tmp_path / "out.json")
    _run(path, FP, BATCHES, kill_after=3)
    journal = records.journal_path(path)
    lines = open(journal, encoding="utf-8").read().split("\n")
    lines[2] = lines[2][:10]
    with open(journal, "w", encoding="utf-8") as f:
        f.write("\n".join(lines))
    with pytest.raises(RecordsError, match=r"journal '.*out\.json\.journal\.jsonl' line 3 is corrupt"):
        Checkpoint(path, FP)


def test_fingerprint_mismatch_names_the_field_and_the_fix(tmp_path):
    path = str(tmp_path / "out.json")
    _run(path, FP, BATCHES, kill_after=2)
    other = dict(FP, sampling={"top_k": 40, "temperature": 1.0})
    with pytest.raises(CheckpointMismatch, match=r"sampling\.top_k=50, this run has sampling\.top_k=40.*--overwrite"):
        Checkpoint(path, other)
    with pytest.raises(CheckpointMismatch, match=r"seed=0, this run has seed=<absent>"):
        Checkpoint(path, {"model": FP["model"], "sampling": FP["sampling"]})
    # overwrite discards the journal and starts over
    _run(path, other, BATCHES, overwrite=True)
    assert records.load_metadata(path)["fingerprint"] == other
    # a finished output made otherwise is refused, then replaced with overwrite
    with pytest.raises(CheckpointMismatch, match=r"already exists, made with sampling\.top_k=40"):
        Checkpoint(path, FP)
    assert not os.path.exists(records.journal_path(path))
    assert _run(path, FP, BATCHES, overwrite=True).complete


def test_output_of_an_older_version_counts_as_complete_when_the_recorded_fields_agree(tmp_path, capsys):
    path = str(tmp_path / "out.json")
    records.save_records([{"prompt": "p"}], path)
    records.save_metadata(path, {"fingerprint": {"seed": 0}})  # written before model fingerprints existed
    with Checkpoint(path, FP) as ckpt:
        assert ckpt.complete
    assert "did not record ['model', 'sampling']" in capsys.readouterr().out
    records.save_metadata(path, {"fingerprint": {"seed": 1}})
    with pytest.raises(CheckpointMismatch, match="made with seed=1; this run has seed=0"):
        Checkpoint(path, FP)


def test_second_writer_is_refused_and_empty_journal_removed(tmp_path):
    path = str(tmp_path / "out.json")
    with Checkpoint(path, FP) as first:
        with pytest.raises(RecordsError, match="another process is writing"):
            Checkpoint(path, FP)
        assert os.path.exists(records.journal_path(path))  # the refused opener leaves the holder's journal
        first.append(BATCHES[0])
    with Checkpoint(path, FP) as again:
        assert again.done == BATCHES[0]
        again.finalize()
    with Checkpoint(str(tmp_path / "other.json"), FP):
        pass
    assert not os.path.exists(records.journal_path(str(tmp_path / "other.json")))  # nothing journaled: no file


def test_append_writes_only_the_new_batch(tmp_path):
    path = str(tmp_path / "out.json")
    with Checkpoint(path, FP) as ckpt:
        sizes = []
        for batch in BATCHES:
            before = ckpt.bytes_written
            ckpt.append(batch)
            sizes.append(ckpt.bytes_written - before)
        assert os.path.getsize(records.journal_path(path)) == ckpt.bytes_written
        assert max(sizes[1:]) - min(sizes[1:]) <= 2  # constant per batch, not growing
