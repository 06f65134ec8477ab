"""Reward models: pairwise (Bradley-Terry, TRL RewardTrainer) and multi-objective regression.

A command line over `mapalign.train_reward`; run with --help for every flag."""
import os

from mapalign import cli
from mapalign.train_reward import documented


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    # train_reward's flags fill three configs (script, TRL's RewardConfig, ModelConfig); --help lists them all
    cli.main(documented())
