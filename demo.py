"""The main MAP job on the embedded default model, end to end and offline (`make demo`).

A command line over `mapalign.demo`; run with --help for every flag."""
from mapalign import cli
from mapalign.demo import main


if __name__ == "__main__":
    cli.main(main, serialize=lambda _: None)
