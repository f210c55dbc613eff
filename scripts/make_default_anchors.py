"""Rebuild the bundled synthetic Compare2Score anchor set (vqpipe/assets/anchors-synthetic).

    python scripts/make_default_anchors.py

Five anchors (α = 5 equal MOS intervals, β = 1 lowest-σ image each) picked from the train
split of the synthetic image dataset (12 contents, seed 7).
"""

import tempfile
from pathlib import Path

from vqpipe.data import make_image_dataset
from vqpipe.scorers.anchor_sets import default_anchor_set, write_anchor_set

if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        table = make_image_dataset(Path(tmp) / "data", n_contents=12, seed=7)
        anchors = write_anchor_set(table[table["split"] == "train"], default_anchor_set())
    print(anchors.table.to_string(index=False))
