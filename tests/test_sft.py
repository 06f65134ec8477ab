"""sft.py: completion-only SFT on a tiny model, the custom-loss hook, partial freezing."""
import os

import pytest
import torch

from mapalign import sft
from mapalign import training

EXAMPLES = [{"prompt": f"Question {i}: say yes.", "completion": " yes yes yes"} for i in range(8)]


def _nll_loss_factory(model, tokenizer):
    def loss_fn(model, inputs):
        logits, targets, mask = sft.completion_logits(model, inputs)
        nll = torch.nn.functional.cross_entropy(logits.float(), targets, reduction="sum")
        return nll, mask.sum(), {"nll": float(nll.detach() / mask.sum())}
    return loss_fn


def test_custom_loss_hook_equals_trl_nll_and_trains(tiny_lm_dir, tmp_path):
    from mapalign import models
    model, tok = models.load_model_and_tokenizer(tiny_lm_dir, device="cpu", padding_side="right")
    native = sft.build_sft_trainer(model, tok, EXAMPLES, str(tmp_path / "a"), per_device_train_batch_size=4)
    custom = sft.build_sft_trainer(model, tok, EXAMPLES, str(tmp_path / "b"), per_device_train_batch_size=4,
                                   loss_fn=_nll_loss_factory(model, tok))
    batch = next(iter(native.get_train_dataloader()))
    assert (batch["labels"] != -100).sum() == 4 * (len(tok(" yes yes yes")["input_ids"]) + 1)  # completion + EOS
    with torch.no_grad():
        a = native.compute_loss(model, dict(batch))
        b = custom.compute_loss(model, dict(batch))
    assert float(a) == pytest.approx(float(b), rel=1e-5)

    out = sft.train_sft(tiny_lm_dir, EXAMPLES, str(tmp_path / "run"), use_lora=True, learning_rate=3e-3,
                        per_device_train_batch_size=4, num_train_epochs=4, warmup_ratio=0.05, device="cpu",
                        loss_factory=_nll_loss_factory, adam_beta1=0.8, logging_steps=1)
    meta = training.load_training_metadata(out)
    assert training.is_finished(out) and meta["use_lora"] and meta["hyperparameters"]["adam_beta1"] == 0.8
    losses = [h["loss"] for h in meta["log_history"] if "loss" in h]
    assert losses[-1] < losses[0]
    assert "nll" in meta["log_history"][0]
    assert os.path.isfile(os.path.join(out, "adapter", "adapter_config.json"))


def test_completion_logits_are_the_full_logits_at_completion_positions(tiny_lm_dir):
    from mapalign import models
    model, tok = models.load_model_and_tokenizer(tiny_lm_dir, device="cpu", padding_side="right")
    enc = tok(["Tell me a joke", "Hi"], return_tensors="pt", padding=True)
    labels = enc["input_ids"].clone()
    labels[:, :2] = -100
    labels[enc["attention_mask"] == 0] = -100
    with torch.no_grad():
        rows, targets, mask = sft.completion_logits(model, dict(enc, labels=labels))
        full = model(**enc).logits[:, :-1]
    assert torch.allclose(rows, full[mask], atol=1e-5) and torch.equal(targets, labels[:, 1:][mask])


def test_freeze_bottom_layers(tiny_lm_dir):
    from mapalign import models
    model, _ = models.load_model_and_tokenizer(tiny_lm_dir, device="cpu")
    assert sft.freeze_bottom_layers(model, 0.5) == 1  # 2 blocks: the bottom one freezes
    layers = model.model.layers
    assert not any(p.requires_grad for p in layers[0].parameters())
    assert all(p.requires_grad for p in layers[1].parameters())
    with pytest.raises(ValueError, match="unfrozen_layers_ratio"):
        sft.freeze_bottom_layers(model, 0)


def test_empty_examples_are_refused(tiny_lm_dir, tmp_path):
    from mapalign import models
    model, tok = models.load_model_and_tokenizer(tiny_lm_dir, device="cpu")
    with pytest.raises(ValueError, match="empty"):
        sft.build_sft_trainer(model, tok, [], str(tmp_path))


def test_eos_is_appended_unless_the_example_says_not(tiny_lm_dir):
    from mapalign import models
    _, tok = models.load_model_and_tokenizer(tiny_lm_dir, device="cpu")
    a, b = sft.tokenize_examples(tok, [{"prompt": "Tell me", "completion": " a joke"},
                                       {"prompt": "Tell me", "completion": " a joke", "eos": False}])
    assert a["input_ids"][-1] == tok.eos_token_id and a["input_ids"][:-1] == b["input_ids"]
    assert sum(a["completion_mask"]) == sum(b["completion_mask"]) + 1 == len(tok(" a joke")["input_ids"]) + 1
