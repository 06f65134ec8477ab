"""Render every paper figure from one scored results file, making the intermediate artefacts with
the toolkit's own functions (nothing typed in).

A command line over `mapalign.plots.make_gallery`; run with --help for every flag."""
from mapalign import cli
from mapalign.plots.make_gallery import make_gallery


if __name__ == "__main__":
    cli.main(make_gallery)
