"""A local web app (Gradio) for MAP decoding with a value palette.

A command line over `mapalign.gui`; run with --help for every flag."""
from mapalign import cli
from mapalign.gui import main


if __name__ == "__main__":
    cli.main(main)
