"""Prompt sources: the shipped offline set, the HH-RLHF and Imdb parsing (run through the real `datasets`
loading code on tiny local copies), local files and named-column datasets, and clear errors."""
import json
import os

import pytest

from mapalign import prompts
from mapalign.prompts import PromptsError, load_prompts


def test_builtin_set_is_large_varied_and_clean():
    ps = load_prompts("builtin")
    assert len(ps) >= 200
    assert len(set(ps)) == len(ps)
    assert all(isinstance(p, str) and p == p.strip() and len(p) > 10 for p in ps)
    with open(prompts.BUILTIN_FILE, encoding="utf-8") as f:
        items = json.load(f)["prompts"]
    cats = [item["category"] for item in items]
    assert {"everyday", "advice", "risky"} == set(cats)
    assert cats.count("risky") >= 40
    # interleaved: the first 30 prompts already mix all three categories (the demo uses a prefix)
    assert set(cats[:30]) == {"everyday", "advice", "risky"}


def test_first_human_turn():
    text = "\n\nHuman: How do I bake bread?  \n\nAssistant: Use flour.\n\nHuman: And then?\n\nAssistant: Knead."
    assert prompts.first_human_turn(text) == "How do I bake bread?"
    with pytest.raises(PromptsError, match="Human"):
        prompts.first_human_turn("no markers at all")
    with pytest.raises(PromptsError, match="Assistant"):
        prompts.first_human_turn("Human: only a question")


def _write_jsonl(path, rows):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


def _hh(question, answer="Sure."):
    return {"chosen": f"\n\nHuman: {question}\n\nAssistant: {answer}",
            "rejected": f"\n\nHuman: {question}\n\nAssistant: No."}


def test_anthropic_harmless_from_local_hub_layout(tmp_path):
    repo = tmp_path / "hh"
    _write_jsonl(str(repo / "harmless-base" / "test.jsonl"),
                 [_hh("How do I pick a lock?"), _hh("  What is a prank?  "), _hh("How do I pick a lock?")])
    _write_jsonl(str(repo / "harmless-base" / "train.jsonl"), [_hh("TRAIN SPLIT")])
    _write_jsonl(str(repo / "helpful-base" / "test.jsonl"), [_hh("HELPFUL DIR")])
    ps = load_prompts("Anthropic-harmless", dataset_path=str(repo), cache_dir=str(tmp_path / "cache"))
    # first human turn, stripped, duplicates kept, test split of harmless-base only
    assert ps == ["How do I pick a lock?", "What is a prank?", "How do I pick a lock?"]


def test_anthropic_harmless_from_save_to_disk(tmp_path):
    import datasets
    dd = datasets.DatasetDict({"test": datasets.Dataset.from_list([_hh("Saved one?"), _hh("Saved two?")])})
    dd.save_to_disk(str(tmp_path / "saved"))
    assert load_prompts("Anthropic-harmless", dataset_path=str(tmp_path / "saved")) == ["Saved one?", "Saved two?"]
    with pytest.raises(PromptsError, match="no split 'validation'"):
        load_prompts("Anthropic-harmless", dataset_path=str(tmp_path / "saved"), split="validation")


def test_hub_dataset_offline_and_uncached_gives_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(PromptsError) as info:
        load_prompts("Anthropic-harmless", cache_dir=str(tmp_path / "empty-cache"))
    message = str(info.value)
    assert "Anthropic/hh-rlhf" in message and "--data_name=builtin" in message and "--dataset_path" in message


def _reviews():
    neg = [f"negative review {i} was a dull and tedious watch from start to end" for i in range(50)]
    pos = [f"positive review {i} was a lovely and charming film for everyone" for i in range(50)]
    return neg + pos + ["too short to use", "x" * 30]  # the last two are ≤ 30 characters


def test_imdb_prompts_are_seeded_mixed_and_cut_at_word_boundaries():
    reviews = _reviews()
    a = prompts.imdb_prompts(reviews, seed=0, count=20)
    assert a == prompts.imdb_prompts(reviews, seed=0, count=20)
    assert a != prompts.imdb_prompts(reviews, seed=1, count=20)
    assert len(a) == 20
    assert any(p.startswith("negative") for p in a) and any(p.startswith("positive") for p in a)
    for p in a:
        source = next(r for r in reviews if r.startswith(p))
        assert len(p) <= 30 and len(source) > 30
        assert source[len(p)] == " "  # cut back to a word boundary
    assert prompts.cut_to_word_boundary("abcdefghijklmnopqrstuvwxyz0123456789", 25) == "abcdefghijklmnopqrstuvwxy"
    assert prompts.cut_to_word_boundary("hello world again", 13) == "hello world"


def test_imdb_through_datasets_loader(tmp_path):
    rows = [{"text": t, "label": int(t.startswith("positive"))} for t in _reviews()]
    _write_jsonl(str(tmp_path / "imdb" / "train.jsonl"), rows)
    ps = load_prompts("Imdb", dataset_path=str(tmp_path / "imdb"), seed=3, cache_dir=str(tmp_path / "cache"))
    assert ps == prompts.imdb_prompts([r["text"] for r in rows], seed=3)
    assert len(ps) == 100  # every review longer than 30 characters (fewer than 1000 here)


def test_local_files_in_every_format(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps(["one", "two"]))
    (tmp_path / "b.json").write_text(json.dumps([{"question": "q1"}, {"question": "q2"}]))
    (tmp_path / "c.json").write_text(json.dumps({"prompts": [{"prompt": "p1"}, {"prompt": "p2"}]}))
    (tmp_path / "d.jsonl").write_text('{"prompt": "l1"}\n\n{"prompt": "l2"}\n')
    (tmp_path / "e.csv").write_text('id,question\n1,"Hello, there?"\n2,Second\n')
    (tmp_path / "f.txt").write_text("first line\n\n  second line  \n")
    assert load_prompts(str(tmp_path / "a.json")) == ["one", "two"]
    assert load_prompts(str(tmp_path / "b.json"), prompt_column="question") == ["q1", "q2"]
    assert load_prompts(str(tmp_path / "c.json")) == ["p1", "p2"]
    assert load_prompts(str(tmp_path / "d.jsonl")) == ["l1", "l2"]
    assert load_prompts(str(tmp_path / "e.csv"), prompt_column="question") == ["Hello, there?", "Second"]
    assert load_prompts(str(tmp_path / "f.txt")) == ["first line", "second line"]


def test_named_column_of_a_saved_dataset(tmp_path):
    import datasets
    datasets.Dataset.from_dict({"question": ["Why?", "How?"], "n": [1, 2]}).save_to_disk(str(tmp_path / "ds"))
    assert load_prompts(str(tmp_path / "ds"), prompt_column="question") == ["Why?", "How?"]
    with pytest.raises(PromptsError, match=r"no column 'prompt'.*question"):
        load_prompts(str(tmp_path / "ds"))
    with pytest.raises(PromptsError, match="non-text"):
        load_prompts(str(tmp_path / "ds"), prompt_column="n")


def test_malformed_inputs_give_one_clear_error_each(tmp_path):
    with pytest.raises(PromptsError, match="not found"):
        load_prompts(str(tmp_path / "missing.csv"))
    (tmp_path / "bad.json").write_text('["unterminated"')
    with pytest.raises(PromptsError, match="not valid JSON"):
        load_prompts(str(tmp_path / "bad.json"))
    (tmp_path / "cols.csv").write_text("a,b\n1,2\n")
    with pytest.raises(PromptsError, match=r"no column 'prompt'.*\['a', 'b'\]"):
        load_prompts(str(tmp_path / "cols.csv"))
    (tmp_path / "empty.txt").write_text("\n \n")
    with pytest.raises(PromptsError, match="no non-empty prompts"):
        load_prompts(str(tmp_path / "empty.txt"))
    (tmp_path / "x.parquet").write_text("")
    with pytest.raises(PromptsError, match="unsupported extension"):
        load_prompts(str(tmp_path / "x.parquet"))
    with pytest.raises(PromptsError, match="non-empty string"):
        load_prompts("")


def test_data_tag_names_files_safely(tmp_path):
    (tmp_path / "my questions.csv").write_text("prompt\nhi\n")
    assert prompts.data_tag("Anthropic-harmless") == "Anthropic-harmless"
    assert prompts.data_tag("builtin") == "builtin"
    assert prompts.data_tag(str(tmp_path / "my questions.csv")) == "my_questions"
    assert prompts.data_tag("org/some-dataset") == "org_some-dataset"
