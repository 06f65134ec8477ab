"""Bad-input sweep over every CLI that reads results files (and over the journals and sidecars they
read): truncated JSON, wrong types, NaN/±inf rewards, duplicate ids, missing `prompt`, empty file, BOM, a
directory instead of a file. Each must exit 2 with one `error:` line naming the file (and the record, where
one is at fault) and change no file (checksums of the whole folder before and after).

The CLIs run in-process through cli.main with their real argv (as `python X.py ...` would); one
subprocess per entry point checks the scripts' own `__main__` wiring."""
import hashlib
import json
import os
import re
import subprocess
import sys

import pytest

from mapalign import cli
from mapalign import records
from conftest import ROOT

BASE = [{"prompt": "p0", "generated": "p0 a", "continuation": "a", "id": "0-0", "prompt_id": 0, "sample_id": 0,
         "humor": 0.5, "harmlessness": 0.1},
        {"prompt": "p1", "generated": "p1 b", "continuation": "b", "id": "1-0", "prompt_id": 1, "sample_id": 0,
         "humor": -0.5, "harmlessness": 0.2}]
HH = [{"chosen": "\n\nHuman: hi\n\nAssistant: hello", "rejected": "\n\nHuman: hi\n\nAssistant: go away"},
      {"chosen": "\n\nHuman: q\n\nAssistant: a", "rejected": "\n\nHuman: q\n\nAssistant: no"}]


def _text(recs, reward="humor", **change):
    """Valid JSON of `recs` with record 1 changed (a JSON literal per key, e.g. NaN)."""
    text = json.dumps(recs, indent=4)
    for key, literal in change.items():
        text = text.replace(f'"{key}": {json.dumps(recs[1][key])}', f'"{key}": {literal}', 1)
    return text


def cases(base, required="prompt", reward="humor"):
    """{case: (file content or None for a directory, what the message must also name)}."""
    dup = [dict(r) for r in base]
    if "id" in dup[0]:
        dup[1]["id"] = dup[0]["id"]
    missing = [dict(r) for r in base]
    del missing[1][required]
    good = json.dumps(base, indent=4)
    out = {
        "truncated": (good[:len(good) // 2], "not valid JSON"),
        "missing_required": (json.dumps(missing), f"record 1 .*has no '{required}'"),
        "empty": ("", "empty"),
        "bom": ("\ufeff" + good, "byte-order mark"),
        "directory": (None, "is a directory"),
    }
    if reward:
        out.update({
            "wrong_type": (_text(base, **{reward: '"high"'}), f"record 1 .*'{reward}' is a str"),
            "nan": (_text(base, **{reward: "NaN"}), f"record 1 .*'{reward}' is nan"),
            "inf": (_text(base, **{reward: "Infinity"}), f"record 1 .*'{reward}' is inf"),
            "minus_inf": (_text(base, **{reward: "-Infinity"}), f"record 1 .*'{reward}' is -inf"),
            "duplicate_ids": (json.dumps(dup), "records 0 and 1 have the same id '0-0'"),
        })
    else:  # HH preference data (genDPOdata): no rewards; a folder is its hub layout, so the message says so
        out["wrong_type"] = (json.dumps([base[0], "not an object"]), "record 1 of .* is a str, not an object")
        out["directory"] = (None, "no train.jsonl.gz / train.jsonl / train.json under")
    return out


def _tree(folder):
    """{relative path: sha256} of every file (and '<dir>' for every folder) under `folder`."""
    out = {}
    for root, dirs, files in os.walk(folder):
        for d in dirs:
            out[os.path.relpath(os.path.join(root, d), folder)] = "<dir>"
        for f in files:
            with open(os.path.join(root, f), "rb") as fh:
                out[os.path.relpath(os.path.join(root, f), folder)] = hashlib.sha256(fh.read()).hexdigest()
    return out


def _place(path, content):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if content is None:
        os.makedirs(path)
    else:
        with open(path, "w", encoding="utf-8") as f:
            f.write(content)


def _run_cli(component, argv, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["prog", *argv])
    monkeypatch.delenv("MAP_DEBUG", raising=False)
    with pytest.raises(SystemExit) as info:
        cli.main(component)
    return info.value.code, capsys.readouterr().err


def _components():
    from mapalign import align as alignValues
    from mapalign import dpodata as genDPOdata
    from mapalign import merging as mergeProcessor
    from mapalign import rewarding as rewardProcessor
    from mapalign import train_dpo as trainDPO
    from mapalign.plots import plot_cal_winrate, plot_reward_dist
    good = "good.json"
    return {
        # name: (component, argv with {f} = the bad file, base records, required key, reward key, extra good files)
        "rewardProcessor.add_reward": (rewardProcessor.RewardProcessor,
                                       ["--file_path={f}", "--progress=False", "add_reward", "--value=length"]),
        "rewardProcessor.assess_original_value": (rewardProcessor.RewardProcessor,
                                                  ["--file_path={f}", "assess_original_value"]),
        "mergeProcessor.merge_added_rewards": (mergeProcessor.MergeProcessor,
                                               ["merge_added_rewards", "--original_file_path={f}"]),
        "alignValues.optimize_lambda": (alignValues.AlignValues,
                                        ["--c_list=0.1", "--value_list=humor", "--file_path={f}", "optimize_lambda"]),
        "trainDPO.train_map_dpo": ({"train_dpo": trainDPO.train_dpo, "train_map_dpo": trainDPO.train_map_dpo},
                                   ["train_map_dpo", "--file_path={f}", "--lam_list=1", "--value_list=humor"]),
        "plot_reward_dist.plot_hist": ({"plot_hist": plot_reward_dist.plot_hist}, ["plot_hist", "--json_file={f}"]),
        "plot_cal_winrate.collect_multiple_results": (
            {"collect_multiple_results": plot_cal_winrate.collect_multiple_results},
            ["collect_multiple_results", f"--model_files={good}", "--base_model_file={f}", "--file_prefix=wr"]),
        "genDPOdata.main": ({"main": genDPOdata.main},
                            ["main", "--harmless_ratio=1.0", "--sample_size=2", "--data_source_path={f}",
                             "--save_path=dpo.json"]),
    }


SWEEP = [(name, case) for name in ("rewardProcessor.add_reward", "rewardProcessor.assess_original_value",
                                   "mergeProcessor.merge_added_rewards", "alignValues.optimize_lambda",
                                   "trainDPO.train_map_dpo", "plot_reward_dist.plot_hist",
                                   "plot_cal_winrate.collect_multiple_results")
         for case in sorted(cases(BASE))] + [("genDPOdata.main", case) for case in sorted(cases(HH, "chosen", None))]


@pytest.mark.parametrize("name,case", SWEEP)
def test_bad_results_file_exits_2_with_one_line_and_changes_nothing(tmp_path, monkeypatch, capsys, name, case):
    component, argv = _components()[name]
    base, required, reward = (HH, "chosen", None) if name.startswith("genDPOdata") else (BASE, "prompt", "humor")
    content, pattern = cases(base, required, reward)[case]
    monkeypatch.chdir(tmp_path)
    records.save_records(BASE, str(tmp_path / "good.json"))
    bad = str(tmp_path / "bad.json")
    _place(bad, content)
    before = _tree(str(tmp_path))
    code, err = _run_cli(component, [a.replace("{f}", bad) for a in argv], monkeypatch, capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    assert bad in lines[0] and re.search(pattern, lines[0]), lines[0]
    assert _tree(str(tmp_path)) == before


# --------------------------------------------------------------------------------------------
# what else the CLIs read: reward temp files, shards, journals, sidecars

def _results(tmp_path):
    path = str(tmp_path / "m-data.json")
    records.save_records(BASE, path)
    return path


TEMP_CASES = {k: v for k, v in cases([{"id": r["id"], "prompt": r["prompt"], "length": 1.0 + i}
                                      for i, r in enumerate(BASE)], "id", "length").items()}


@pytest.mark.parametrize("case", sorted(TEMP_CASES))
def test_bad_reward_temp_file_is_named_by_the_merge(tmp_path, monkeypatch, capsys, case):
    from mapalign import merging as mergeProcessor
    path = _results(tmp_path)
    content, pattern = TEMP_CASES[case]
    if case == "missing_required":  # temp entries without ids are paired by position; without a score: refused
        content, pattern = json.dumps([{"id": "0-0", "prompt": "p0", "length": 1.0}, {"prompt": "p1"}]), \
            "1 entries lack a finite number for 'length'|no score"
    temp = mergeProcessor.temp_reward_path(path, "length")
    _place(temp, content)
    before = _tree(str(tmp_path))
    code, err = _run_cli(mergeProcessor.MergeProcessor, ["merge_added_rewards", f"--original_file_path={path}"],
                         monkeypatch, capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and temp in lines[0], err
    assert re.search(pattern, lines[0]), lines[0]
    assert _tree(str(tmp_path)) == before


@pytest.mark.parametrize("case", ["truncated", "nan", "duplicate_ids", "directory", "bom"])
def test_bad_shard_is_named_by_the_shard_merge(tmp_path, monkeypatch, capsys, case):
    from mapalign import merging as mergeProcessor
    content, pattern = cases(BASE)[case]
    good = str(tmp_path / "temp" / "m-data_0to2.json")
    os.makedirs(tmp_path / "temp")
    records.save_records(BASE, good)
    bad = str(tmp_path / "temp" / "m-data_2to4.json")
    _place(bad, content)
    before = _tree(str(tmp_path))
    code, err = _run_cli(mergeProcessor.MergeProcessor,
                         ["merge_gendata_bypattern", str(tmp_path / "temp" / "m-data_*to*.json")], monkeypatch, capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and bad in lines[0], err
    assert _tree(str(tmp_path)) == before


def _mc_argv(tiny_lm_dir, folder):
    return [f"--basemodel_name={tiny_lm_dir}", f"--save_directory={folder}", "--num_prompts=4", "--max_new_tokens=4",
            "--progress=False", "generate_from_MC_aligned_model", "--lam_list=0.5", "--value_list=length",
            "--MC_nsamples=2", "--batch_size=2"]


JOURNAL_CASES = {
    "corrupt_middle_line": (lambda fp: json.dumps({"fingerprint": fp}) + "\n" + '{"records": [{"prom\n'
                            + json.dumps({"records": []}) + "\n", "line 2 is corrupt"),
    "wrong_type": (lambda fp: json.dumps({"fingerprint": fp}) + "\n" + json.dumps({"records": "x"}) + "\n",
                   "line 2 is not a batch of records"),
    "not_a_journal": (lambda fp: json.dumps([1, 2]) + "\n", "line 1 is not a fingerprint line"),
    "bom": (lambda fp: "\ufeff" + json.dumps({"fingerprint": fp}) + "\n" + json.dumps({"records": []}) + "\n",
            "line 1 is corrupt"),
    "directory": (None, "is a directory"),
}


@pytest.mark.parametrize("case", sorted(JOURNAL_CASES))
def test_bad_journal_of_mc_decoding_is_named(tmp_path, tiny_lm_dir, monkeypatch, capsys, case):
    """gendata's MC mode reads its shard's journal on resume: a damaged one is named, never guessed at."""
    from mapalign import decoding
    from mapalign.generation import TextGeneration
    gen = TextGeneration(basemodel_name=tiny_lm_dir, save_directory=str(tmp_path), num_prompts=4, max_new_tokens=4,
                         progress=False)
    shard = decoding.shard_path(str(tmp_path), gen.base_name, [0.5], "length", 0, 4)
    journal = records.journal_path(shard)
    make, pattern = JOURNAL_CASES[case]
    _place(journal, None if make is None else make({"kind": "mc_aligned"}))
    before = _tree(str(tmp_path))
    code, err = _run_cli(TextGeneration, _mc_argv(tiny_lm_dir, tmp_path), monkeypatch, capsys)
    lines = [ln for ln in err.strip().splitlines() if not ln.startswith("Loading weights")]
    assert code == 2 and len(lines) == 1 and journal in lines[0], err
    assert re.search(pattern, lines[0]), lines[0]
    assert _tree(str(tmp_path)) == before


@pytest.mark.parametrize("case", ["truncated", "not_an_object", "bom", "directory"])
def test_bad_sidecar_is_named(tmp_path, monkeypatch, capsys, case):
    """Defect 4: a corrupt metadata sidecar is an error naming the sidecar (not 'Expecting value ...')."""
    from mapalign import rewarding as rewardProcessor
    path = _results(tmp_path)
    sidecar = records.metadata_path(path)
    _place(sidecar, {"truncated": '{"model": ', "not_an_object": "[1]", "bom": '\ufeff{"model": "m"}',
                     "directory": None}[case])
    before = _tree(str(tmp_path))
    code, err = _run_cli(rewardProcessor.RewardProcessor,
                         [f"--file_path={path}", "--progress=False", "add_reward", "--value=perplexity"],
                         monkeypatch, capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and sidecar in lines[0] and "metadata sidecar" in lines[0], err
    assert _tree(str(tmp_path)) == before


# --------------------------------------------------------------------------------------------
# the scripts' own entry points (one bad file each, as a real subprocess)

@pytest.mark.parametrize("script,argv", [
    ("rewardProcessor.py", ["--file_path={f}", "add_reward", "--value=length"]),
    ("mergeProcessor.py", ["merge_added_rewards", "--original_file_path={f}"]),
    ("alignValues.py", ["--c_list=0.1", "--value_list=humor", "--file_path={f}", "optimize_lambda"]),
])
def test_scripts_exit_2_with_one_line(tmp_path, script, argv):
    bad = str(tmp_path / "bad.json")
    _place(bad, _text(BASE, humor="NaN"))
    before = _tree(str(tmp_path))
    proc = subprocess.run([sys.executable, os.path.join(ROOT, script), *[a.replace("{f}", bad) for a in argv]],
                          cwd=str(tmp_path), capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1"))
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and bad in lines[0] and "record 1 (id '1-0')" in lines[0], \
        proc.stderr
    assert _tree(str(tmp_path)) == before
