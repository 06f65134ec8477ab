"""Preference fine-tuning: the original DPO baseline on an HH-RLHF harmless/helpful mixture, and MAP-DPO.

A command line over `mapalign.train_dpo`; run with --help for every flag."""
import os
import sys

from mapalign import cli
from mapalign.train_dpo import train_dpo, train_map_dpo


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    # the original command line had no subcommand (`python trainDPO.py --...`): it runs train_dpo
    if len(sys.argv) > 1 and sys.argv[1].startswith("--") and sys.argv[1] not in ("--help", "-h"):
        cli.main(train_dpo)
    else:
        cli.main({"train_dpo": train_dpo, "train_map_dpo": train_map_dpo})
