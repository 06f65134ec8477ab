"""Shared figure setup for the plot scripts: headless backend, optional TeX text, readable labels,
and atomic PDF+PNG saving.

TeX text rendering is used only when a TeX install is found (latex, dvipng and ghostscript on
PATH) and MAP_PLOT_USETEX is not "0"; otherwise matplotlib's own mathtext renders the same
labels ($\\lambda$ and friends), so no figure needs TeX.
"""
import os
import shutil
import tempfile

import matplotlib

matplotlib.use("Agg")  # headless: no display on servers and CI
import matplotlib.pyplot as plt  # noqa: E402

from mapalign import values  # noqa: E402

FORMATS = ("pdf", "png")


def tex_available():
    """True when matplotlib can render text with TeX here (and the user did not opt out)."""
    if os.environ.get("MAP_PLOT_USETEX", "1") == "0":
        return False
    return all(shutil.which(tool) for tool in ("latex", "dvipng", "gs"))


USETEX = tex_available()
plt.rcParams.update({
    "text.usetex": USETEX,
    "font.family": "serif" if USETEX else "sans-serif",
    "axes.spines.top": False,
    "axes.spines.right": False,
    "figure.dpi": 100,
    "savefig.bbox": "tight",
})

_TEX_SPECIALS = {"\\": r"\textbackslash{}", "%": r"\%", "&": r"\&", "#": r"\#", "_": r"\_",
                 "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def tex_escape(text):
    """Escape TeX specials in plain text (for TeX tables, and for labels when TeX renders them)."""
    return "".join(_TEX_SPECIALS.get(ch, ch) for ch in str(text))


def text(s):
    """A label made safe for the active renderer: under TeX, plain-text parts are escaped
    ('MAP-80%' breaks TeX otherwise) and $...$ math parts are kept. Labels use math for symbols
    ($\\lambda$, $\\to$) rather than Unicode, which TeX's default fonts lack."""
    s = str(s)
    if not USETEX:
        return s
    parts = s.split("$")
    return "$".join(part if i % 2 else tex_escape(part) for i, part in enumerate(parts))


def value_label(value):
    """Axis/legend label of a value from the registry's display names ("gpt2-helpful" -> "Helpfulness")."""
    return text(values.display_name(value))


def lambda_label(value):
    """Axis label for the λ coefficient of a value, e.g. "λ Helpfulness"."""
    return r"$\lambda$ " + value_label(value)


def strip_extension(output_prefix):
    """Users may pass `fig.pdf` or `fig`; both mean the prefix `fig`."""
    root, ext = os.path.splitext(output_prefix)
    return root if ext.lower() in (".pdf", ".png", ".svg") else output_prefix


def save_figure(fig, output_prefix, dpi=150, formats=FORMATS):
    """Save `fig` as {output_prefix}.pdf and .png (each through a temp file and a rename, so a
    kill never leaves half a figure), close it, and return the written paths."""
    output_prefix = strip_extension(output_prefix)
    folder = os.path.dirname(os.path.abspath(output_prefix))
    os.makedirs(folder, exist_ok=True)
    paths = []
    try:
        for ext in formats:
            path = f"{output_prefix}.{ext}"
            fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=f".{ext}")
            os.close(fd)
            try:
                fig.savefig(tmp, format=ext, dpi=dpi)
                os.replace(tmp, path)
            finally:
                if os.path.exists(tmp):
                    os.remove(tmp)
            paths.append(path)
    finally:
        plt.close(fig)
    for path in paths:
        print(f"wrote {path}")
    return paths
