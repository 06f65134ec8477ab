"""Trainer configs: every trainer's settings are one dataclass with documented defaults; its command line
maps flags onto it (configs.config_from_flags / configs.document). Checks: the defaults are the pre-dataclass
signatures' (snapshot of commit f7916ea), every flag is documented in --help, an unknown flag is one clear
error, and rewardTrainer's flags give the same TRL configs as TRL's own parser did."""
import dataclasses
import inspect
import os
import subprocess
import sys
from dataclasses import dataclass
from typing import Optional

import pytest

from mapalign import configs
from mapalign import dpatrainer
from mapalign import train_alt
from mapalign import train_dpa
from mapalign import train_dpo
from mapalign import train_ppo
from mapalign.errors import InputError
from conftest import ROOT

R = "REQUIRED"
# the keyword defaults of main / train_dpo / train_map_dpo / ALT.__init__ / TrainDPA.__init__ before the configs
OLD = {
    "ppo": {'lam_list': None, 'value_list': None, 'model_name': None, 'data_name': 'builtin', 'save_path': None,
            'learning_rate': 1e-06, 'batch_size': 20, 'mini_batch_size': 2, 'nepoch': 1, 'trainer': 'rloo',
            'beta': 1.0, 'num_generations': 2, 'max_new_tokens': None, 'temperature': None, 'top_k': None,
            'top_p': None, 'max_prompts': None, 'use_chat_template': None, 'lambda_file': None,
            'allow_mismatch': False, 'palette': None, 'palette_every': 10, 'palette_prompts': 16,
            'palette_samples': 4, 'dual_update': 'exact', 'dual_step': 1.0, 'palette_tol_se': 2.0, 'use_lora': False,
            'lora_r': 16, 'lora_alpha': 32, 'lora_dropout': 0.05, 'lora_target_modules': 'all-linear',
            'merge_lora': True, 'seed': 0, 'resume_from_checkpoint': None, 'report_to': 'none', 'bf16': False,
            'gradient_checkpointing': False, 'logging_steps': 10, 'save_steps': 50, 'max_steps': -1,
            'num_iterations': 1, 'grpo_loss_type': 'dapo', 'dtype': None, 'value_device': None, 'overwrite': False},
    "dpo": {'sample_size': R, 'beta': R, 'harmless_ratio': R, 'save_path': None, 'use_lora': False,
            'model_name': 'smollm2-135m', 'data_source_path': None, 'split': 'train', 'max_words': 50,
            'loss_type': 'sigmoid', 'loss_weights': None, 'label_smoothing': 0.0, 'learning_rate': 5e-05,
            'num_train_epochs': 1, 'per_device_train_batch_size': 2, 'gradient_accumulation_steps': 10,
            'max_length': 1024, 'use_chat_template': None, 'lora_r': 16, 'lora_alpha': 32, 'lora_dropout': 0.05,
            'lora_target_modules': 'all-linear', 'merge_lora': True, 'seed': 0, 'resume_from_checkpoint': None,
            'report_to': 'none', 'bf16': False, 'gradient_checkpointing': False, 'logging_steps': 10,
            'save_steps': 50, 'max_steps': -1, 'dtype': None, 'overwrite': False},
    "map_dpo": {'file_path': R, 'lam_list': None, 'value_list': None, 'model_name': None, 'save_path': None,
                'pairing': 'soft', 'margin': 0.0, 'max_pairs_per_prompt': None, 'beta': 1.0, 'loss_type': 'sigmoid',
                'loss_weights': None, 'label_smoothing': 0.0, 'desirable_weight': 1.0, 'undesirable_weight': 1.0,
                'learning_rate': 5e-05, 'num_train_epochs': 1, 'per_device_train_batch_size': 2,
                'gradient_accumulation_steps': 10, 'max_length': 1024, 'use_chat_template': None,
                'lambda_file': None, 'allow_mismatch': False, 'palette': None, 'palette_rounds': 3,
                'palette_prompts': 8, 'palette_samples': 4, 'dual_update': 'exact', 'dual_step': 1.0,
                'palette_tol_se': 2.0, 'use_lora': False, 'lora_r': 16, 'lora_alpha': 32, 'lora_dropout': 0.05,
                'lora_target_modules': 'all-linear', 'merge_lora': True, 'seed': 0, 'resume_from_checkpoint': None,
                'report_to': 'none', 'bf16': False, 'gradient_checkpointing': False, 'logging_steps': 10,
                'save_steps': 50, 'max_steps': -1, 'dtype': None, 'overwrite': False},
    "alt": {'output_dir': 'results/alt', 'feedback': 'alt_rm', 'value_list': None, 'lam_list': None,
            'model_name': 'smollm2-135m', 'data_name': 'builtin', 'num_train_prompts': 64, 'num_valid_prompts': 32,
            'samples_per_prompt': None, 'max_new_tokens': 64, 'temperature': 1.0, 'top_k': 50, 'seed': 0,
            'num_quantiles': 5, 'phrases': None, 'template': None, 'quantiles': 'per_prompt', 'drop_factor': 1.0,
            'per_quantile': 2, 'per_prompt': 8, 'kl_coef': 0.05, 'entropy_coef': 0.06, 'learning_rate': 2e-05,
            'num_train_epochs': 2, 'per_device_train_batch_size': 8, 'gradient_accumulation_steps': 1,
            'warmup_ratio': 0.05, 'adam_beta1': 0.8, 'adam_beta2': 0.999, 'adam_epsilon': 1e-08,
            'weight_decay': 3e-07, 'unfrozen_layers_ratio': 1.0, 'use_lora': None, 'lora_r': 16, 'lora_alpha': 32,
            'lora_dropout': 0.05, 'lora_target_modules': 'all-linear', 'max_length': 1024, 'judge': 'local',
            'judge_base_url': None, 'judge_model': None, 'judge_api_key_env': 'OPENAI_API_KEY',
            'judge_concurrency': 8, 'judge_cache_dir': None, 'judge_tries': 5, 'valid_samples': 1,
            'valid_temperature': 1.0, 'use_chat_template': 'auto', 'batch_size': 32, 'checkpoint_every': 8,
            'device': None, 'dtype': None, 'overwrite': False, 'progress': True},
    # TrainDPA's flags all default to None (a run folder's settings fill them); DPAConfig's own defaults:
    "dpa": {'model_name': 'smollm2-135m', 'objectives': 'rm:models/rm', 'objective_names': None, 'mode': 'direction',
            'data_name': 'builtin', 'num_train_prompts': 64, 'num_eval_prompts': 16, 'iterations': 3,
            'samples_per_prompt': 4, 'max_new_tokens': 64, 'temperature': 1.0, 'top_k': 50, 'batch_size': 32,
            'max_angle': 45.0, 'main_objective': 0, 'rerank_directions': 0, 'num_palettes': 16, 'scaling_max': 50.0,
            'eval_grid_step': 15.0, 'learning_rate': 0.0001, 'num_train_epochs': 2.0,
            'per_device_train_batch_size': 8, 'use_lora': True, 'lora_r': 16, 'lora_alpha': 32, 'max_length': 512,
            'seed': 0},
}
# flags a command gained with its config (train_dpo shares PreferenceConfig with train_map_dpo: KTO's weights)
# or later (trainALT's palette_words: palette feedback names each bin's ALT-RM word)
ADDED = {"dpo": {"desirable_weight": 1.0, "undesirable_weight": 1.0}, "alt": {"palette_words": True},
         "ppo": {"lr_scheduler_type": None}}


def signature_defaults(fn):
    return {k: (R if p.default is p.empty else p.default) for k, p in inspect.signature(fn).parameters.items()
            if k not in ("self", "flags")}


@pytest.mark.parametrize("name,fn", [("ppo", train_ppo.main), ("dpo", train_dpo.train_dpo),
                                     ("map_dpo", train_dpo.train_map_dpo), ("alt", train_alt.ALT)])
def test_command_defaults_are_the_old_ones(name, fn):
    assert signature_defaults(fn) == dict(OLD[name], **ADDED.get(name, {}))


def test_dpa_defaults_are_the_old_ones():
    assert {f.name: f.default for f in configs.config_fields(dpatrainer.DPAConfig)} == OLD["dpa"]
    flags = signature_defaults(train_dpa.TrainDPA)
    assert flags.pop("output_dir") == R and flags.pop("overwrite") is False and flags.pop("progress") is True
    assert flags == {k: None for k in OLD["dpa"]}  # left out = the run folder's recorded value, else the default


@pytest.mark.parametrize("config,fn", [(train_ppo.MAPFConfig, train_ppo.main),
                                       (train_dpo.DPOBaselineConfig, train_dpo.train_dpo),
                                       (train_dpo.MAPDPOConfig, train_dpo.train_map_dpo),
                                       (train_alt.ALTConfig, train_alt.ALT),
                                       (dpatrainer.DPAConfig, train_dpa.TrainDPA)])
def test_every_flag_is_documented(config, fn):
    for f in configs.config_fields(config):
        assert f.metadata.get("help"), f"{config.__name__}.{f.name} has no documentation"
        assert f"\n    {f.name}: " in fn.__doc__, f"--{f.name} is missing from {fn.__name__}'s --help"


def test_config_from_flags_errors():
    @dataclass(kw_only=True)
    class Config:
        path: str = configs.option(doc="a file")
        beta: float = configs.option(1.0, "β")
        name: Optional[str] = configs.option(None, "a name")

    assert configs.config_from_flags(Config, {"beta": 2}, ("x.json",)) == Config(path="x.json", beta=2)
    with pytest.raises(InputError, match=r"^unknown flag --bta \(did you mean --beta\?\); valid flags: --path, --beta, --name$"):
        configs.config_from_flags(Config, {"path": "x", "bta": 2})
    with pytest.raises(InputError, match=r"^unknown flag --zzz \(and --bta\); valid flags: --path, --beta, --name$"):
        configs.config_from_flags(Config, {"path": "x", "zzz": 1, "bta": 2})
    with pytest.raises(InputError, match="--path is required"):
        configs.config_from_flags(Config, {"beta": 2})
    with pytest.raises(InputError, match="--path is given twice"):
        configs.config_from_flags(Config, {"path": "y"}, ("x",))
    with pytest.raises(InputError, match="too many positional"):
        configs.config_from_flags(Config, {}, ("x", "y"))


def test_unknown_flag_is_one_input_error(tmp_path):
    for call in (lambda: train_ppo.main(lam_list="1", bogus=1),
                 lambda: train_dpo.train_dpo(8, 0.1, 0.5, bogus=1),
                 lambda: train_dpo.train_map_dpo("x.json", bogus=1),
                 lambda: train_alt.ALT(value_list="sentiment", bogus=1),
                 lambda: train_dpa.TrainDPA(str(tmp_path / "run"), bogus=1)):
        with pytest.raises(InputError, match=r"^unknown flag --bogus; valid flags: .*--seed"):
            call()


def run_script(*argv):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("MAP_DEBUG", None)
    return subprocess.run([sys.executable, *argv], cwd=ROOT, capture_output=True, text=True, env=env, timeout=300)


def test_command_line_unknown_flag_and_help():
    out = run_script("trainPPO.py", "--lam_list=1", "--bogus=2")
    assert out.returncode == 2 and out.stderr.strip().startswith("error: unknown flag --bogus; valid flags: --lam_list")
    out = run_script("trainDPO.py", "train_dpo", "--help")
    text = out.stdout + out.stderr  # fire writes help to stderr when not on a terminal
    assert out.returncode == 0 and "DPO β (original grid 0.1, 0.5)" in text
    for f in configs.config_fields(train_dpo.DPOBaselineConfig):
        assert f"--{f.name}=" in text or f"    {f.name.upper()}\n" in text, f"--{f.name} not in --help"


def test_reward_flags_give_the_configs_trl_parser_gave():
    """The README's rewardTrainer command lines: fire's flags mapped by configs_from_flags equal what
    HfArgumentParser made of the same line (with the old --evaluation_strategy alias and CPU-safe values)."""
    import fire
    from transformers import HfArgumentParser
    from mapalign import train_reward
    lines = [
        "--model_name_or_path=gpt2 --output_dir=results/reward_modeling_anthropic_hh --per_device_train_batch_size=64 "
        "--num_train_epochs=1 --gradient_accumulation_steps=16 --gradient_checkpointing=True --learning_rate=1.41e-5 "
        "--report_to=wandb --remove_unused_columns=False --optim=adamw_torch --logging_steps=10 "
        "--evaluation_strategy=steps --max_length=512",
        "--objective=ridge --model_name_or_path=smollm2-135m --data_source_path=results/labelled.json "
        "--attributes=sentiment,length --output_dir=models/rm-ridge --pooling=mean --output_scale=0-100 "
        "--label_range=1,8",
        "--model_name_or_path gpt2 --output_dir o --dataset_config 2024 --max_train_samples 10 --use_peft=True "
        "--lora_target_modules q_proj --eval_strategy no --run_name=123",
    ]
    classes = train_reward._config_classes()
    for line in lines:
        argv = line.split()
        old_argv = ["--eval_strategy" + a[len("--evaluation_strategy"):] if a.startswith("--evaluation_strategy")
                    else a for a in argv]
        given = {a.split("=")[0].lstrip("-") for a in argv if a.startswith("--")}
        old_argv += [f"--{k}={v}" for k, v in {"bf16": "False", "gradient_checkpointing": "False",
                                              "report_to": "none"}.items() if k not in given]
        old = HfArgumentParser(classes).parse_args_into_dataclasses(args=old_argv)
        new = train_reward.configs_from_flags(fire.Fire(lambda **kw: kw, command=argv))
        for o, n in zip(old, new):
            assert dataclasses.asdict(o) == dataclasses.asdict(n), line
    with pytest.raises(InputError, match="unknown flag --bogus; valid flags: --objective"):
        train_reward.configs_from_flags({"bogus": 1})
