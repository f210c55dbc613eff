"""Compare2Score anchor sets: a small directory of anchor images with their MOS and σ.

Layout: ``anchors.csv`` (``file``, ``mos``, ``std``; one row per anchor, worst first) next to
the image files, and optionally ``matrix.json`` — a precomputed anchor matrix
``P[i][j] = P(anchor_i ≻ anchor_j)`` (the official release hard-codes one for its KonIQ
anchors: :data:`OFFICIAL_ANCHOR_MATRIX`). Without it the scorer computes the matrix once with
its model and caches it on disk.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from vqpipe.quality_math.anchor_selection import select_anchors

OFFICIAL_ANCHOR_MATRIX = np.array(
    [
        [0.5, 0.25912809, 3.3130276e-04, 1.6087297e-06, 1.1803027e-09],
        [0.74087191, 0.5, 0.24985345, 0.099954158, 1.8675303e-08],
        [0.99966872, 0.75014657, 0.5, 0.4996888, 0.24852838],
        [0.99999839, 0.90004587, 0.5003112, 0.5, 0.25400183],
        [1.0, 1.0, 0.75147164, 0.74599814, 0.5],
    ]
)
"""The official Compare2Score anchor matrix (5 KonIQ-10k anchors, low → high quality)."""


@dataclass(frozen=True)
class AnchorSet:
    """Anchor images (low → high MOS), their table and an optional precomputed matrix."""

    root: Path
    table: pd.DataFrame
    matrix: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.table)

    def images(self) -> list[Image.Image]:
        out = []
        for name in self.table["file"]:
            with Image.open(self.root / name) as im:
                out.append(im.convert("RGB"))
        return out

    @property
    def fingerprint(self) -> str:
        """sha256 over the table and the image bytes (what a cached matrix is keyed by)."""
        digest = hashlib.sha256(self.table.to_csv(index=False).encode())
        for name in self.table["file"]:
            digest.update((self.root / name).read_bytes())
        return f"sha256:{digest.hexdigest()}"


def default_anchor_set() -> Path:
    """The bundled synthetic anchor set (5 images picked from the synthetic data)."""
    return Path(str(resources.files("vqpipe") / "assets" / "anchors-synthetic"))


def load_anchor_set(path: str | os.PathLike | None = None) -> AnchorSet:
    """Read an anchor-set directory (``None``: the bundled synthetic set)."""
    root = Path(path) if path is not None else default_anchor_set()
    table_file = root / "anchors.csv"
    if not table_file.exists():
        raise FileNotFoundError(f"{root} is not an anchor set: no anchors.csv")
    table = pd.read_csv(table_file)
    missing = {"file", "mos"} - set(table.columns)
    if missing:
        raise ValueError(f"{table_file} lacks column(s) {sorted(missing)}")
    absent = [f for f in table["file"] if not (root / f).exists()]
    if absent:
        raise FileNotFoundError(f"anchor images missing in {root}: {absent}")
    matrix = None
    if (root / "matrix.json").exists():
        matrix = np.asarray(json.loads((root / "matrix.json").read_text()), dtype=np.float64)
        check_anchor_matrix(matrix, len(table))
    return AnchorSet(root=root, table=table.reset_index(drop=True), matrix=matrix)


def check_anchor_matrix(matrix: np.ndarray, m: int, atol: float = 1e-4) -> None:
    """An anchor matrix must be m×m, with a 0.5 diagonal and ``P[i,j] = 1 − P[j,i]``."""
    if matrix.shape != (m, m):
        raise ValueError(f"anchor matrix has shape {matrix.shape}, expected ({m}, {m})")
    if not np.allclose(np.diag(matrix), 0.5, atol=atol):
        raise ValueError("anchor matrix diagonal must be 0.5")
    if not np.allclose(matrix + matrix.T, 1.0, atol=atol):
        raise ValueError("anchor matrix must satisfy P[i,j] = 1 - P[j,i]")


def write_anchor_set(
    mos_table: pd.DataFrame,
    out_dir: str | os.PathLike,
    alpha: int = 5,
    beta: int = 1,
    image_root: str | os.PathLike | None = None,
    matrix: np.ndarray | None = None,
) -> AnchorSet:
    """Select anchors from a MOS table (``path``, ``mos``, ``std``) with
    :func:`~vqpipe.scoring.select_anchors` and write them as an anchor-set directory."""
    chosen = select_anchors(mos_table, alpha=alpha, beta=beta)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = []
    for i, path in enumerate(chosen["path"]):
        source = Path(image_root) / path if image_root is not None else Path(path)
        name = f"anchor{i:02d}{source.suffix.lower()}"
        shutil.copyfile(source, out / name)
        files.append(name)
    table = pd.DataFrame(
        {
            "file": files,
            "mos": chosen["mos"].to_numpy(),
            "std": chosen["std"].to_numpy(),
            "source": [Path(str(p)).name for p in chosen["path"]],
        }
    )
    table.to_csv(out / "anchors.csv", index=False)
    if matrix is not None:
        check_anchor_matrix(np.asarray(matrix), len(table))
        (out / "matrix.json").write_text(json.dumps(np.asarray(matrix).tolist()))
    return load_anchor_set(out)
