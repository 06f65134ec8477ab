"""Where MAP's λ lie among random-weight λ: MAP λ of random feasible palettes next to Dirichlet
reference λ of a similar budget, both from the CSVs of AlignValues.gen_rand_MAP_lambda.

A command line over `mapalign.plots.plot_rand_lambda_MAP_region`; run with --help for every flag."""
from mapalign import cli
from mapalign.plots.plot_rand_lambda_MAP_region import plot_lambdas_2D_subplots, plot_lambdas_3D


if __name__ == "__main__":
    cli.main({"plot_lambdas_3D": plot_lambdas_3D, "plot_lambdas_2D_subplots": plot_lambdas_2D_subplots})
