"""MAP-F (trainPPO.py) on a tiny random Llama: RLOO/GRPO wiring, the combined reward, the explicit
reference, end-to-end training with naming and metadata."""
import json
import os

import numpy as np
import pytest
import torch

from mapalign import models
from mapalign import training
from mapalign import train_ppo as trainPPO
from mapalign import values

PROMPTS = ["Tell me a joke", "How do I bake bread?", "What is the best way to learn?", "Give me tips"] * 4


def e_fraction(prompts, continuations):
    """Share of the letter 'e' in the continuation (a reward a tiny model can learn in a few steps)."""
    return np.array([c.count("e") / max(1, len(c)) for c in continuations])


def char_length(prompts, continuations):
    return np.array([len(c) / 40.0 for c in continuations])


def prompt_length(prompts, continuations):
    return np.array([len(p) / 10.0 for p in prompts])


@pytest.fixture(scope="module")
def registered():
    values.register_value("test-efrac", fn=e_fraction, overwrite=True)
    values.register_value("test-chars", fn=char_length, overwrite=True)
    yield
    for name in ("test-efrac", "test-chars"):
        values.REGISTRY.pop(name, None)


def load(tiny_lm_dir):
    model, tokenizer = models.load_model_and_tokenizer(tiny_lm_dir, device="cpu")
    model.train()
    return model, tokenizer


def logged(trainer, key):
    return [h[key] for h in trainer.state.log_history if key in h]


def test_combined_reward_uses_every_value_with_its_lambda(tiny_lm_dir, tmp_path):
    model, tokenizer = load(tiny_lm_dir)
    scorers = {"efrac": e_fraction, "chars": char_length, "plen": prompt_length}
    lam = [3.0, 0.5, 2.0]
    trainer = trainPPO.build_trainer(model, tokenizer, PROMPTS[:4], list(scorers), lam, scorers, str(tmp_path),
                                     beta=1.0, ref_model=training.frozen_copy(model), learning_rate=1e-5,
                                     batch_size=8, mini_batch_size=8, num_generations=4, max_new_tokens=6,
                                     logging_steps=1, max_steps=2, save_steps=1000)
    assert trainer.reward_func_names == ["efrac", "chars", "plen"]
    assert trainer.reward_weights.tolist() == lam
    trainer.train()
    # TRL logs the weighted reward and each value's mean: reward = Σ λ_i mean_i for every step
    for step in [h for h in trainer.state.log_history if "reward" in h]:
        combined = sum(l * step[f"rewards/{v}/mean"] for l, v in zip(lam, scorers))
        assert step["reward"] == pytest.approx(combined, rel=1e-4)
        # values see the raw prompt (at most 30 characters here), not the longer chat-formatted text
        assert step["rewards/plen/mean"] <= max(len(p) for p in PROMPTS) / 10 + 1e-6


def test_combined_reward_matrix():
    scorers = {"a": lambda p, c: np.array([1.0, 2.0]), "b": lambda p, c: np.array([10.0, -1.0])}
    rewards, combined = trainPPO.combined_reward(["x", "y"], ["u", "v"], ["a", "b"], [0.5, 2.0], scorers)
    np.testing.assert_allclose(rewards, [[1, 2], [10, -1]])
    np.testing.assert_allclose(combined, [20.5, -1.0])
    with pytest.raises(ValueError, match="one λ per value"):
        trainPPO.map_reward_functions(["a", "b"], [1.0], scorers)


def test_reward_function_sees_clean_continuations():
    seen = {}

    def spy(prompts, continuations):
        seen["p"], seen["c"] = prompts, continuations
        return np.zeros(len(prompts))

    reward = trainPPO.ValueReward("spy", spy)
    out = reward(["<|im_start|>user\nhi<|im_end|>"], ["  hello there \n"], map_prompt=["hi"])
    assert out == [0.0] and seen == {"p": ["hi"], "c": ["hello there"]}
    assert reward.__name__ == "spy"


def test_rloo_reward_rises_and_reference_stays_fixed(tiny_lm_dir, tmp_path):
    model, tokenizer = load(tiny_lm_dir)
    ref = training.frozen_copy(model)
    before = {k: v.clone() for k, v in ref.state_dict().items()}
    scorers = {"efrac": e_fraction, "chars": char_length}
    trainer = trainPPO.build_trainer(model, tokenizer, PROMPTS, ["efrac", "chars"], [3.0, 0.0], scorers, str(tmp_path),
                                     beta=0.05, ref_model=ref, learning_rate=3e-2, batch_size=8, mini_batch_size=8,
                                     num_generations=4, max_new_tokens=8, logging_steps=1, max_steps=20,
                                     save_steps=1000, seed=0)
    assert trainer.ref_model is ref  # the explicit reference, not one reloaded from the config's path
    assert trainer.args.lr_scheduler_type == "linear"  # the default without --palette
    trainer.train()
    rewards = logged(trainer, "reward")
    assert len(rewards) == 20
    assert np.mean(rewards[-5:]) > np.mean(rewards[:5]) + 0.1
    assert all(torch.equal(v, ref.state_dict()[k]) for k, v in before.items())
    assert any(not torch.equal(p, ref.state_dict()[k]) for k, p in model.state_dict().items())


def test_grpo_option_keeps_lambda_scale(tiny_lm_dir, tmp_path):
    model, tokenizer = load(tiny_lm_dir)
    scorers = {"efrac": e_fraction}
    trainer = trainPPO.build_trainer(model, tokenizer, PROMPTS[:4], ["efrac"], [2.0], scorers, str(tmp_path),
                                     trainer="grpo", beta=1.0, ref_model=training.frozen_copy(model),
                                     learning_rate=1e-4, batch_size=8, mini_batch_size=4, num_generations=4,
                                     max_new_tokens=6, logging_steps=1, max_steps=2, save_steps=1000)
    assert type(trainer).__name__ == "GRPOTrainer"
    assert trainer.args.scale_rewards == "none" and trainer.beta == 1.0 and trainer.ref_model is not None
    trainer.train()
    assert len(logged(trainer, "reward")) == 2


def test_bad_batch_settings_fail_clearly(tiny_lm_dir, tmp_path):
    model, tokenizer = load(tiny_lm_dir)
    scorers = {"efrac": e_fraction}
    with pytest.raises(ValueError, match="divisible by --mini_batch_size"):
        trainPPO.build_trainer(model, tokenizer, PROMPTS, ["efrac"], [1.0], scorers, str(tmp_path),
                               batch_size=10, mini_batch_size=4)
    with pytest.raises(ValueError, match="num_generations"):
        trainPPO.build_trainer(model, tokenizer, PROMPTS, ["efrac"], [1.0], scorers, str(tmp_path),
                               batch_size=8, mini_batch_size=4, num_generations=3)
    with pytest.raises(ValueError, match="explicit reference"):  # never rebuilt behind the user's back
        trainPPO.build_trainer(model, tokenizer, PROMPTS, ["efrac"], [1.0], scorers, str(tmp_path),
                               batch_size=8, mini_batch_size=4, num_generations=4, beta=1.0)


def test_main_end_to_end_lora_naming_and_metadata(tiny_lm_dir, tmp_path, registered, monkeypatch):
    prompts_file = tmp_path / "qs.json"
    prompts_file.write_text(json.dumps(PROMPTS[:4]))
    monkeypatch.chdir(tmp_path)
    save_path = trainPPO.main(lam_list="1.5,0.25", value_list="test-efrac,test-chars", model_name=tiny_lm_dir,
                              data_name=str(prompts_file), learning_rate=1e-3, batch_size=8, mini_batch_size=4,
                              num_generations=4, max_new_tokens=6, max_steps=2, use_lora=True, lora_r=4,
                              logging_steps=1, seed=3)
    expected = os.path.join("modelsPPO", f"{models.model_short_name(tiny_lm_dir)}-qs-lam_1.500_0.250-"
                                         "val_test-efrac_test-chars")
    assert save_path == expected
    meta = training.load_training_metadata(save_path)
    assert meta["lam"] == [1.5, 0.25] and meta["values"] == ["test-efrac", "test-chars"]
    assert meta["seed"] == 3 and meta["beta"] == 1.0 and meta["trainer"] == "RLOOTrainer"
    assert meta["base_model"] == tiny_lm_dir and meta["lora_merged"] is True
    assert os.path.isfile(os.path.join(save_path, "adapter", "adapter_config.json"))
    assert not [d for d in os.listdir(save_path) if d.startswith("checkpoint-")]
    reloaded, _ = models.load_model_and_tokenizer(save_path, device="cpu")  # a plain model folder
    assert reloaded.config.vocab_size > 0
    # a finished run is not redone
    assert trainPPO.main(lam_list="1.5,0.25", value_list="test-efrac,test-chars", model_name=tiny_lm_dir,
                         data_name=str(prompts_file)) == expected
    with pytest.raises(ValueError, match="one λ per value"):
        trainPPO.main(lam_list="1.5", value_list="test-efrac,test-chars", model_name=tiny_lm_dir,
                      data_name=str(prompts_file))


def test_build_dataset_keeps_raw_and_formatted_prompts(tiny_lm_dir, tmp_path):
    _, tokenizer = models.load_model_and_tokenizer(tiny_lm_dir, device="cpu")
    prompts_file = tmp_path / "qs.json"
    prompts_file.write_text(json.dumps(PROMPTS[:4]))
    data = trainPPO.build_dataset(tokenizer, str(prompts_file), max_prompts=3)
    assert data["map_prompt"] == PROMPTS[:3] and data["prompt_id"] == [0, 1, 2]
    assert data["prompt"][0] == models.format_prompts(tokenizer, PROMPTS[:1])[0] != PROMPTS[0]
    raw = trainPPO.build_dataset(tokenizer, str(prompts_file), use_chat_template=False)
    assert raw["prompt"] == PROMPTS[:4]
