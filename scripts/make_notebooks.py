"""Write the notebooks in notebooks/ (run once after editing the cells below).

    python scripts/make_notebooks.py

Both run top to bottom on a small synthetic corpus (tests/test_notebooks.py executes them);
set ``VQPIPE_TABLE`` / ``VQPIPE_MOS`` to point them at a real quality table and MOS table.
"""

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

SETUP = """import os, tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
from PIL import Image

from vqpipe.data import make_image_dataset
from vqpipe.scoring import create_scorer

work = Path(tempfile.mkdtemp(prefix="vqpipe-nb-"))
if os.environ.get("VQPIPE_TABLE"):
    from vqpipe.cli import read_table
    table = read_table(os.environ["VQPIPE_TABLE"])
    mos = read_table(os.environ["VQPIPE_MOS"]) if os.environ.get("VQPIPE_MOS") else None
else:  # a small synthetic corpus scored with the bundled Gamma demo checkpoint
    mos = make_image_dataset(work / "corpus", n_contents=2, size=(96, 72), seed=2026)
    scorer = create_scorer("gamma", device="cpu")
    images = [Image.open(p) for p in mos["path"]]
    out = scorer.score_details(images)
    table = pd.DataFrame({"uri": mos["path"], "gamma_score": out["score"],
                          "gamma_probs": list(out["probs"]), "error": None})
table.head()"""

EXPLORE = [
    new_markdown_cell(
        "# Explore a quality table\n\nLoad a quality table (the Parquet output of "
        "`vqpipe score`), look at the score distribution and the lowest / highest scored "
        "images, and pick a curation threshold."
    ),
    new_code_cell(SETUP),
    new_code_cell(
        'score_cols = [c for c in table.columns if c.endswith("_score")]\n'
        'ok = table[table["error"].isna()] if "error" in table else table\n'
        'print(f"{len(table)} rows, {len(table) - len(ok)} with an error; scorers: {score_cols}")\n'
        "ok[score_cols].describe()"
    ),
    new_code_cell(
        "col = score_cols[0]\n"
        "fig, ax = plt.subplots(figsize=(5, 3))\n"
        "ax.hist(ok[col], bins=30)\n"
        'ax.set(xlabel=col, ylabel="images", title="score distribution")\n'
        "fig.tight_layout()"
    ),
    new_code_cell(
        "def thumbs(rows, title):\n"
        "    fig, axes = plt.subplots(1, len(rows), figsize=(2 * len(rows), 2.2))\n"
        "    for ax, (_, r) in zip(np.atleast_1d(axes), rows.iterrows()):\n"
        '        ax.imshow(Image.open(r["uri"]).convert("RGB")); ax.axis("off")\n'
        '        ax.set_title(f"{r[col]:.3f}", fontsize=8)\n'
        "    fig.suptitle(title); fig.tight_layout()\n"
        "\n"
        'thumbs(ok.nsmallest(5, col), "lowest scored")\n'
        'thumbs(ok.nlargest(5, col), "highest scored")'
    ),
    new_code_cell(
        "percentile = 30  # drop the lowest 30 %\n"
        "threshold = float(ok[col].quantile(percentile / 100))\n"
        "keep = ok[ok[col] >= threshold]\n"
        'print(f"threshold {threshold:.4f}: keep {len(keep)} of {len(ok)} images")\n'
        'keep[["uri", col]].to_parquet(work / "keep.parquet")\n'
        "# the same keep list from the command line:\n"
        "# vqpipe filter OUTPUT --percentile gamma_score:30 --out keep.parquet"
    ),
]

EVALUATE = [
    new_markdown_cell(
        "# Evaluate against MOS\n\nJoin a quality table with a MOS table and compute SRCC, "
        "KRCC and PLCC per dataset with bootstrap intervals — the `vqpipe eval` report in "
        "notebook form."
    ),
    new_code_cell(SETUP),
    new_code_cell(
        "from vqpipe.eval import evaluate, join_predictions\n"
        "joined = join_predictions(table, mos)\n"
        "print(joined.summary())\n"
        'metrics = evaluate(table, mos, by="dataset", bootstrap=50)\n'
        "metrics"
    ),
    new_code_cell(
        "from vqpipe.eval.metrics import fit_logistic\n"
        'col = joined.scorers[0] + "_score"\n'
        "t = joined.table.dropna(subset=[col])\n"
        'fit = fit_logistic(t[col], t["mos"])\n'
        "grid = np.linspace(t[col].min(), t[col].max(), 100)\n"
        "fig, ax = plt.subplots(figsize=(4, 4))\n"
        'ax.scatter(t[col], t["mos"], s=10)\n'
        'ax.plot(grid, fit(grid), color="C3")\n'
        'ax.set(xlabel=col, ylabel="MOS")\n'
        "fig.tight_layout()"
    ),
    new_code_cell(
        "from vqpipe.eval.report import write_report\n"
        'record = write_report(table, mos, work / "report", bootstrap=20)\n'
        'print((work / "report" / "report.md").read_text()[:600])'
    ),
]


def write(cells: list, name: str) -> None:
    nb = new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    path = Path(__file__).resolve().parents[1] / "notebooks" / name
    nbformat.write(nb, path)
    print(path)


if __name__ == "__main__":
    write(EXPLORE, "explore_quality_table.ipynb")
    write(EVALUATE, "evaluate_against_mos.ipynb")
