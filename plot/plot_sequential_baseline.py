"""The sequential baseline: aligning one value at a time (each value's λ optimised with the others
frozen, in turn) versus MAP's joint λ, at palettes taken from the model's own quantiles.

A command line over `mapalign.plots.plot_sequential_baseline`; run with --help for every flag."""
from mapalign import cli
from mapalign.plots.plot_sequential_baseline import compute_sequential_baseline, plot_sequential_baseline


if __name__ == "__main__":
    cli.main({"compute_sequential_baseline": compute_sequential_baseline,
              "plot_sequential_baseline": plot_sequential_baseline})
