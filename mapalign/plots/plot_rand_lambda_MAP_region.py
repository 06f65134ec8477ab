"""Where MAP's λ lie among random-weight λ: MAP λ of random feasible palettes next to Dirichlet
reference λ of a similar budget, both from the CSVs of AlignValues.gen_rand_MAP_lambda.

    python alignValues.py --value_list=humor,gpt2-helpful,gpt2-harmless \
        --file_path=results/llama2_chat-Anthropic-harmless.json gen_rand_MAP_lambda --num_lambda=100 --scaling_MAX=6
    python plot/plot_rand_lambda_MAP_region.py plot_lambdas_3D --file_path=rand_MAP_lambda.csv \
        --x_value=gpt2-helpful --y_value=gpt2-harmless --z_value=humor --output_prefix=results/fig_lambda_3D
    python plot/plot_rand_lambda_MAP_region.py plot_lambdas_2D_subplots --file_paths=a.csv,b.csv \
        --x_value=gpt2-helpful --y_value=gpt2-harmless --output_prefix=results/fig_lambda_2D

Rows whose status is not "feasible" are left out. Each command writes a PDF and a PNG.
"""
import os


import numpy as np  # noqa: E402

from mapalign.plots import figstyle  # noqa: E402  (selects the headless backend before pyplot is used)
from mapalign.plots import artefacts  # noqa: E402

plt = figstyle.plt

MAP_STYLE = dict(color="tab:blue", alpha=0.55, s=14, linewidths=0, label="MAP $\\lambda$ (random palettes)")
REF_STYLE = dict(color="tab:orange", alpha=0.45, s=14, linewidths=0, label="Dirichlet reference $\\lambda$")


def _columns(data, path, names):
    missing = [v for v in names if v not in data["values"]]
    if missing:
        raise artefacts.ArtefactError(f"{path!r} holds λ for {data['values']}, not for {missing}; choose values "
                                      "from that list.")
    idx = [data["values"].index(v) for v in names]
    return data["lam"][:, idx], data["reference_lam"][:, idx]


def _upper(*arrays):
    top = max(float(np.max(a)) for a in arrays)
    return 1.05 * top if top > 0 else 1.0


def plot_lambdas_3D(file_path, x_value, y_value, z_value, output_prefix):
    """3D scatter of the MAP λ and the Dirichlet reference λ of one gen_rand_MAP_lambda CSV, semi-
    transparent, overlaid. file_path: the CSV. x_value, y_value, z_value: values of the axes (e.g.
    gpt2-helpful, gpt2-harmless, humor). output_prefix: output path without extension."""
    data = artefacts.read_rand_lambda_csv(file_path)
    lam, ref = _columns(data, file_path, [x_value, y_value, z_value])
    fig = plt.figure(figsize=(5.5, 5.0))
    ax = fig.add_subplot(projection="3d")
    ax.scatter(*lam.T, **{**MAP_STYLE, "label": figstyle.text(MAP_STYLE["label"])})
    ax.scatter(*ref.T, **{**REF_STYLE, "label": figstyle.text(REF_STYLE["label"])})
    top = _upper(lam, ref)
    for setter in (ax.set_xlim, ax.set_ylim, ax.set_zlim):
        setter(0, top)
    ax.set_xlabel(figstyle.lambda_label(x_value), fontsize=9)
    ax.set_ylabel(figstyle.lambda_label(y_value), fontsize=9)
    ax.set_zlabel(figstyle.lambda_label(z_value), fontsize=9)
    ax.tick_params(labelsize=7)
    ax.legend(frameon=False, fontsize=8, loc="upper left")
    ax.set_title(figstyle.text(f"{len(lam)} feasible palettes"), fontsize=9)
    return figstyle.save_figure(fig, output_prefix)


def plot_lambdas_2D_subplots(file_paths, x_value, y_value, output_prefix):
    """One 2D panel per gen_rand_MAP_lambda CSV: its MAP λ and its own Dirichlet reference λ for two
    values. file_paths: the CSVs (comma-separated or a list). x_value, y_value: values of the axes.
    output_prefix: output path without extension. All panels share the axis range."""
    paths = artefacts.as_path_list(file_paths, "file_paths")
    panels = [(path, *_columns(artefacts.read_rand_lambda_csv(path), path, [x_value, y_value])) for path in paths]
    top = _upper(*[a for _, lam, ref in panels for a in (lam, ref)])
    fig, axes = plt.subplots(1, len(panels), figsize=(3.8 * len(panels), 3.7), squeeze=False)
    for ax, (path, lam, ref) in zip(axes[0], panels):
        ax.scatter(*lam.T, **{**MAP_STYLE, "label": figstyle.text(MAP_STYLE["label"])})
        ax.scatter(*ref.T, **{**REF_STYLE, "label": figstyle.text(REF_STYLE["label"])})
        ax.set_xlim(0, top)
        ax.set_ylim(0, top)
        ax.set_xlabel(figstyle.lambda_label(x_value))
        ax.set_ylabel(figstyle.lambda_label(y_value))
        ax.set_title(figstyle.text(os.path.basename(path)), fontsize=8)
        ax.grid(alpha=0.3)
    axes[0, 0].legend(frameon=False, fontsize=7, loc="upper right")
    fig.tight_layout()
    return figstyle.save_figure(fig, output_prefix)
