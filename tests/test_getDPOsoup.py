"""getDPOsoup.py: streamed weighted soups of full models and exact soups of LoRA adapters."""
import os
import shutil

import pytest
import torch
from transformers import AutoModelForCausalLM

from mapalign import soup as getDPOsoup
from mapalign import models
from mapalign import tiny
from mapalign import training


@pytest.fixture(scope="module")
def two_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("soup")
    return tiny.tiny_causal_lm(str(root / "m1"), seed=1), tiny.tiny_causal_lm(str(root / "m2"), seed=2)


def state(path):
    return AutoModelForCausalLM.from_pretrained(path).state_dict()


def test_weights_zero_one_give_each_model_exactly(two_models, tmp_path):
    m1, m2 = two_models
    for weights, source in (([1.0, 0.0], m1), ([0.0, 1.0], m2)):
        out = getDPOsoup.weighted_soup([m1, m2], weights, str(tmp_path / f"s{weights[0]}"))
        a, b = state(out), state(source)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_weighted_average_sharded_and_reloadable(two_models, tmp_path):
    m1, m2 = two_models
    out = getDPOsoup.weighted_soup(f"{m1},{m2}", "0.25,0.75", str(tmp_path / "mix"), max_shard_size_gb=2e-4)
    shards = [n for n in os.listdir(out) if n.endswith(".safetensors")]
    assert len(shards) > 1 and os.path.isfile(os.path.join(out, "model.safetensors.index.json"))
    s, a, b = state(out), state(m1), state(m2)
    for k in s:
        torch.testing.assert_close(s[k], 0.25 * a[k] + 0.75 * b[k])
    meta = training.load_training_metadata(out)
    assert meta["weights"] == [0.25, 0.75] and meta["sources"] == [m1, m2]
    _, tokenizer = models.load_model_and_tokenizer(out, device="cpu")  # tokenizer copied from the first model
    assert tokenizer.chat_template


def test_clear_errors(two_models, tmp_path):
    m1, m2 = two_models
    with pytest.raises(getDPOsoup.SoupError, match="sum to 1"):
        getDPOsoup.weighted_soup([m1, m2], [0.5, 0.6], str(tmp_path / "x"))
    with pytest.raises(getDPOsoup.SoupError, match="one weight per model"):
        getDPOsoup.weighted_soup([m1, m2], [1.0], str(tmp_path / "x"))
    gpt2 = tiny.tiny_causal_lm(str(tmp_path / "g"), arch="gpt2")
    with pytest.raises(getDPOsoup.SoupError, match="different tensors"):
        getDPOsoup.weighted_soup([m1, gpt2], [0.5, 0.5], str(tmp_path / "x"))
    assert not os.path.exists(tmp_path / "x")  # nothing half-written
    getDPOsoup.weighted_soup([m1, m2], [0.5, 0.5], str(tmp_path / "y"))
    with pytest.raises(FileExistsError, match="overwrite"):
        getDPOsoup.weighted_soup([m1, m2], [0.5, 0.5], str(tmp_path / "y"))


def test_original_soup_naming(two_models, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    m1, m2 = two_models
    shutil.copytree(m1, "modelsDPO/tiny-100sample-0.1beta-0.0harmless")
    shutil.copytree(m2, "modelsDPO/tiny-100sample-0.1beta-1.0harmless")
    out = getDPOsoup.soup("tiny", 100, 0.1, 0.3)
    assert out == os.path.join("modelsDPO", "soup", "tiny-100sample-0.1beta-0.3soup")
    s, a, b = state(out), state(m1), state(m2)
    for k in s:
        torch.testing.assert_close(s[k], 0.7 * a[k] + 0.3 * b[k])
    with pytest.raises(getDPOsoup.SoupError, match="train it first"):
        getDPOsoup.soup("tiny", 200, 0.1, 0.3)


def make_adapter(base, path, seed, r):
    from peft import LoraConfig, get_peft_model
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base)
    config = LoraConfig(r=r, lora_alpha=2 * r, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    peft_model = get_peft_model(model, config)
    peft_model.save_pretrained(path)
    merged = peft_model.merge_and_unload().state_dict()
    return path, merged


def test_lora_soup_equals_soup_of_merged_models(two_models, tmp_path):
    from peft import PeftModel
    base = two_models[0]
    a1, merged1 = make_adapter(base, str(tmp_path / "a1"), 1, r=2)
    a2, merged2 = make_adapter(base, str(tmp_path / "a2"), 2, r=4)
    base_state = state(base)
    for weights in ([0.0, 1.0], [0.3, 0.7]):
        out = getDPOsoup.weighted_soup([a1, a2], weights, str(tmp_path / f"soup{weights[0]}"), lora=True)
        soup_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), out).merge_and_unload()
        soup_state = soup_model.state_dict()
        for k in soup_state:
            delta1, delta2 = merged1[k] - base_state[k], merged2[k] - base_state[k]
            expected = base_state[k] + weights[0] * delta1 + weights[1] * delta2
            torch.testing.assert_close(soup_state[k], expected, atol=1e-6, rtol=1e-5)
        assert training.load_training_metadata(out)["rank"] == (4 if weights[0] == 0 else 6)
