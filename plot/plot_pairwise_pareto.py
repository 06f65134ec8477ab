"""Trade-offs between values (paper Fig. 1): realized levels of randomly aligned models, pair by pair.

A command line over `mapalign.plots.plot_pairwise_pareto`; run with --help for every flag."""
from mapalign import cli
from mapalign.plots.plot_pairwise_pareto import plot_matrix_scatterplot, plot_pareto


if __name__ == "__main__":
    cli.main({"plot_matrix_scatterplot": plot_matrix_scatterplot, "plot_pareto": plot_pareto})
