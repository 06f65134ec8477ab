"""Reward models: pairwise (Bradley-Terry, TRL RewardTrainer) and multi-objective regression.

A command line over `mapalign.train_reward`; run with --help for every flag."""
import os

from mapalign import cli
from mapalign.train_reward import main


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    cli.report_input_errors(main)
