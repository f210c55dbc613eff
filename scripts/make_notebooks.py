"""Write the notebooks in notebooks/ (run once after editing the cells below).

    python scripts/make_notebooks.py

Both run top to bottom on a small synthetic corpus of images and videos at the demo checkpoint's
size, 256 x 192 (tests/test_notebooks.py executes them); set ``VQPIPE_TABLE`` / ``VQPIPE_MOS``
(and ``VQPIPE_STORAGE_OPTIONS``, JSON) to point them at a real quality table and MOS table,
local or on any fsspec store, or ``VQPIPE_CHECKPOINT`` to score the corpus with other weights.
"""

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

SETUP = """%matplotlib inline
import json
import os
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from vqpipe.data import make_image_dataset, make_video_dataset
from vqpipe.eval.thumbnails import first_frame, media_kind
from vqpipe.io.fs import read_bytes
from vqpipe.media.decode import decode_video
from vqpipe.scoring import create_scorer

work = Path(tempfile.mkdtemp(prefix="vqpipe-nb-"))
storage = json.loads(os.environ.get("VQPIPE_STORAGE_OPTIONS") or "{}")  # e.g. S3 credentials
if os.environ.get("VQPIPE_TABLE"):
    from vqpipe.io.tables import read_table

    table = read_table(os.environ["VQPIPE_TABLE"], storage)
    mos = read_table(os.environ["VQPIPE_MOS"], storage) if os.environ.get("VQPIPE_MOS") else None
else:  # a small synthetic corpus of images and videos scored with the Gamma demo checkpoint
    # at the size the demo was trained on (256 x 192: its 192 px input only centre-crops them)
    images = make_image_dataset(work / "corpus", n_contents=2, size=(256, 192), seed=2026)
    videos = make_video_dataset(work / "videos", n_videos=3, seconds=1.0, fps=4, size=(256, 192))
    mos = pd.concat([images, videos], ignore_index=True)
    kinds, frames = [], []  # decoded as a job decodes them: images, sampled video frames
    for uri in mos["path"]:
        data = read_bytes(uri)
        kinds.append(media_kind(uri, data))
        video = kinds[-1] == "video"
        frames.append(decode_video(data)[0] if video else [first_frame(data, "image")])
    scorer = create_scorer("gamma", checkpoint=os.environ.get("VQPIPE_CHECKPOINT"), device="cpu")
    print("scored with", scorer.checkpoint)
    out = scorer.score_details([f for fs in frames for f in fs])
    ends = np.cumsum([len(fs) for fs in frames])  # a video's score: the mean over its frames
    parts = np.split(np.arange(ends[-1]), ends[:-1])
    table = pd.DataFrame(
        {
            "uri": mos["path"],
            "media_type": kinds,
            "gamma_score": [float(out["score"][i].mean()) for i in parts],
            "gamma_probs": [out["probs"][i].mean(axis=0) for i in parts],
            "error": None,
        }
    )
table.groupby("media_type").head(3) if "media_type" in table else table.head()"""


DEMO_WEIGHTS = new_markdown_cell(
    "**Demo weights.** Without `VQPIPE_TABLE` this notebook builds a small synthetic corpus "
    "(52 images at 256×192 and 3 short videos) and scores it with the bundled Gamma *demo* "
    "checkpoint (`vqpipe/assets/gamma-demo.safetensors`): a reduced CLIP trained from scratch "
    "on this kind of synthetic distortion data, **not the official Gamma weights**. It ranks "
    "synthetic blur, noise, JPEG, contrast and colour shifts (held-out SRCC 0.88) and knows "
    "nothing about real photos.\n\n"
    "For real data, score it with real weights and point the notebook at the result: "
    "`vqpipe score DATA --out TABLE --scorer gamma:checkpoint=/models/gamma.safetensors` "
    "(or `qalign:checkpoint=…`), then set `VQPIPE_TABLE=TABLE` (and `VQPIPE_MOS` for the "
    "evaluation). To score the synthetic corpus here with other Gamma weights, set "
    "`VQPIPE_CHECKPOINT` (a local path or fsspec URI)."
)


def figure_cell(source: str):
    """A code cell that must show a figure (tests/test_notebooks.py checks its outputs)."""
    cell = new_code_cell(source)
    cell.metadata["tags"] = ["figure"]
    return cell


EXPLORE = [
    new_markdown_cell(
        "# Explore a quality table\n\nLoad a quality table (the Parquet output of "
        "`vqpipe score`), look at the score distribution and the lowest / highest scored "
        "images and videos, and pick a curation threshold."
    ),
    DEMO_WEIGHTS,
    new_code_cell(SETUP),
    new_code_cell(
        'score_cols = [c for c in table.columns if c.endswith("_score")]\n'
        'ok = table[table["error"].isna()] if "error" in table else table\n'
        'if "media_type" not in ok:  # older tables: from the file names\n'
        '    ok = ok.assign(media_type=[media_kind(u) for u in ok["uri"]])\n'
        'counts = ok["media_type"].value_counts().to_dict()\n'
        'print(f"{len(table)} rows, {len(table) - len(ok)} with an error; {counts}")\n'
        'ok.groupby("media_type")[score_cols].describe().T'
    ),
    figure_cell(
        "import matplotlib.pyplot as plt\n"
        "\n"
        "col = score_cols[0]\n"
        'groups = list(ok.groupby("media_type"))\n'
        "fig, axes = plt.subplots(1, len(groups), figsize=(4 * len(groups), 3), squeeze=False)\n"
        "for ax, (kind, g) in zip(axes[0], groups, strict=True):\n"
        "    ax.hist(g[col], bins=20)\n"
        '    ax.set(xlabel=col, ylabel="items", title=f"{kind} (n={len(g)})")\n'
        'fig.suptitle("score distribution")\n'
        "fig.tight_layout()"
    ),
    figure_cell(
        "from vqpipe.eval.thumbnails import thumbnail\n"
        "\n"
        "\n"
        "def thumbs(rows, title):\n"
        "    # vqpipe's reader and decoders: any fsspec URI, a video's first frame; a file that\n"
        "    # cannot be read shows its error instead of stopping the notebook\n"
        "    n = max(len(rows), 1)\n"
        "    fig, axes = plt.subplots(1, n, figsize=(2 * n, 2.3), squeeze=False)\n"
        "    for ax, (_, r) in zip(axes[0], rows.iterrows(), strict=False):\n"
        "        try:\n"
        '            ax.imshow(thumbnail(r["uri"], storage))\n'
        "        except Exception as exc:  # shown in place, not raised\n"
        "            print(f\"cannot show {r['uri']}: {exc}\")\n"
        '            ax.text(0.5, 0.5, f"cannot show:\\n{exc}"[:80], ha="center", fontsize=6)\n'
        '        ax.axis("off")\n'
        "        ax.set_title(f\"{r[col]:.3f} ({r['media_type']})\", fontsize=8)\n"
        "    fig.suptitle(title)\n"
        "    fig.tight_layout()\n"
        "\n"
        "\n"
        'thumbs(ok.nsmallest(5, col), "lowest scored")\n'
        'thumbs(ok.nlargest(5, col), "highest scored")\n'
        'thumbs(ok[ok["media_type"] == "video"].head(5), "videos (first frame)")'
    ),
    new_code_cell(
        "percentile = 30  # drop the lowest 30 %\n"
        "threshold = float(ok[col].quantile(percentile / 100))\n"
        "keep = ok[ok[col] >= threshold]\n"
        'print(f"threshold {threshold:.4f}: keep {len(keep)} of {len(ok)} items")\n'
        'keep[["uri", col]].to_parquet(work / "keep.parquet")\n'
        "# the same keep list from the command line:\n"
        "# vqpipe filter OUTPUT --percentile gamma_score:30 --out keep.parquet"
    ),
]

EVALUATE = [
    new_markdown_cell(
        "# Evaluate against MOS\n\nJoin a quality table with a MOS table and compute SRCC, "
        "KRCC and PLCC per dataset with bootstrap intervals — the `vqpipe eval` report in "
        "notebook form. Undefined metrics are NaN (`n/a` in the report), groups with n < 10 "
        "are flagged (`small`)."
    ),
    DEMO_WEIGHTS,
    new_code_cell(SETUP),
    new_code_cell(
        "from vqpipe.eval import evaluate, join_predictions\n"
        "\n"
        'by = ["dataset"]  # any columns of either table, e.g. ["dataset", "split"]\n'
        "joined = join_predictions(table, mos, columns=by)\n"
        "print(joined.summary())\n"
        "metrics = evaluate(joined, None, by=by, bootstrap=50)\n"
        'small = metrics.loc[metrics["small"], "group"].tolist()\n'
        'print("groups with n < 10 (unreliable):", small)\n'
        'srcc = {f"{r.scorer}/{r.group}": round(r.srcc, 3) for r in metrics.itertuples()}\n'
        'print("SRCC:", srcc)\n'
        'metrics[["scorer", "group", "n", "small", "srcc", "plcc", "srcc_lo", "srcc_hi", "note"]]'
    ),
    figure_cell(
        "from IPython.display import display\n"
        "\n"
        "from vqpipe.eval.report import figures\n"
        "\n"
        "figs = figures(joined, metrics, by)  # the report's figures, shown inline\n"
        "scorer = joined.scorers[0]\n"
        'display(figs[f"scatter_{scorer}_all.png"])\n'
        'display(figs["comparison.png"])\n'
        'display(figs[f"hist_{scorer}.png"])'
    ),
    new_code_cell(
        "from vqpipe.eval.report import write_report\n"
        "\n"
        'record = write_report(table, mos, work / "report", by=by, bootstrap=20)\n'
        'print((work / "report" / "report.md").read_text()[:900])'
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
