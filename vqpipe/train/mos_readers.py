"""Readers for the standard IQA / IAA / VQA MOS files, into one table.

Every reader returns the unified columns ``path, mos, std, dataset, split, scale_low,
scale_high, lower_better`` (+ ``content_id`` where the dataset has reference contents) with
``path`` joined to ``image_root`` (local dir or URI prefix). ``split`` is empty here; use
:func:`assign_splits` (random by image for authentic sets, by reference content for synthetic
ones; the seed goes into the table's ``attrs``).

Layouts (as the datasets publish them):

* KonIQ-10k ``koniq10k_scores_and_distributions.csv``: ``image_name, ..., MOS, SD`` (1–5)
* SPAQ ``MOS and Image attribute scores`` exported as CSV: ``Image name, MOS`` (0–100)
* KADID-10k ``dmos.csv``: ``dist_img, ref_img, dmos, var`` (1–5, higher is better)
* LIVE (release 2, as toolkits export it): ``ref_name, dist_name, dmos[, dmos_std]`` (DMOS)
* CSIQ ``csiq.DMOS`` as CSV: ``image, dst_type, dst_lev, dmos[, dmos_std]`` (DMOS 0–1)
* TID2013 ``mos_with_names.txt``: ``MOS name`` lines (0–9) + optional ``mos_std.txt``
* LIVE Challenge (exported from ``AllMOS_release.mat``): ``image, mos[, std]`` (0–100)
* AGIQA-3K ``data.csv``: ``name, ..., mos_quality, std_quality`` (0–5)
* AVA ``AVA.txt``: ``index image_id count1..count10 tag1 tag2 challenge`` (1–10, from votes)
* KoNViD-1k ``KoNViD_1k_mos.csv``: ``flickr_id, mos[, sd]`` (1–5), videos ``<id>.mp4``
* anything else: :func:`read_generic` (CSV / Parquet / JSONL with path + MOS columns).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from vqpipe.data.synthetic import SPLITS, split_counts

COLUMNS = ["path", "mos", "std", "dataset", "split", "scale_low", "scale_high", "lower_better"]


def _join(root: str | os.PathLike | None, name: Any) -> str:
    name = str(name)
    if root is None:
        return name
    return f"{str(root).rstrip('/')}/{name}"


def _table(
    paths: Any,
    mos: Any,
    std: Any,
    dataset: str,
    scale: tuple[float, float],
    lower_better: bool,
    root: str | os.PathLike | None,
    content: Any = None,
) -> pd.DataFrame:
    out = pd.DataFrame(
        {
            "path": [_join(root, p) for p in paths],
            "mos": np.asarray(mos, dtype=np.float64),
            "std": np.asarray(std, dtype=np.float64) if std is not None else np.nan,
            "dataset": dataset,
            "split": "",
            "scale_low": float(scale[0]),
            "scale_high": float(scale[1]),
            "lower_better": bool(lower_better),
        }
    )
    if content is not None:
        out["content_id"] = [str(c) for c in content]
    return out


def _read(path: str | os.PathLike, **kw: Any) -> pd.DataFrame:
    text = str(path).lower()
    if text.endswith(".parquet"):
        return pd.read_parquet(path)
    if text.endswith(".jsonl"):
        return pd.read_json(path, lines=True)
    return pd.read_csv(path, **kw)


def read_koniq(path: str | os.PathLike, image_root: str | None = None) -> pd.DataFrame:
    t = _read(path)
    return _table(t["image_name"], t["MOS"], t.get("SD"), "koniq10k", (1, 5), False, image_root)


def read_spaq(path: str | os.PathLike, image_root: str | None = None) -> pd.DataFrame:
    t = _read(path)
    return _table(t["Image name"], t["MOS"], None, "spaq", (0, 100), False, image_root)


def read_kadid(path: str | os.PathLike, image_root: str | None = None) -> pd.DataFrame:
    t = _read(path)
    return _table(
        t["dist_img"],
        t["dmos"],
        np.sqrt(t["var"]) if "var" in t else None,
        "kadid10k",
        (1, 5),
        False,
        image_root,
        content=t["ref_img"],
    )


def read_live(path: str | os.PathLike, image_root: str | None = None) -> pd.DataFrame:
    t = _read(path)
    return _table(
        t["dist_name"],
        t["dmos"],
        t.get("dmos_std"),
        "live",
        (0, 100),
        True,
        image_root,
        content=t["ref_name"],
    )


def read_csiq(path: str | os.PathLike, image_root: str | None = None) -> pd.DataFrame:
    t = _read(path)
    names = [
        f"{dst}/{img}.{dst}.{lev}.png" if "/" not in str(img) else img
        for img, dst, lev in zip(t["image"], t["dst_type"], t["dst_lev"], strict=True)
    ]
    return _table(
        names, t["dmos"], t.get("dmos_std"), "csiq", (0, 1), True, image_root, content=t["image"]
    )


def read_tid2013(
    path: str | os.PathLike, image_root: str | None = None, std_path: str | None = None
) -> pd.DataFrame:
    t = pd.read_csv(path, sep=r"\s+", header=None, names=["mos", "name"])
    std = pd.read_csv(std_path, header=None)[0].to_numpy() if std_path else None
    content = [str(n)[:3].lower() for n in t["name"]]  # i01 .. i25 reference images
    return _table(t["name"], t["mos"], std, "tid2013", (0, 9), False, image_root, content)


def read_livec(path: str | os.PathLike, image_root: str | None = None) -> pd.DataFrame:
    t = _read(path)
    return _table(t["image"], t["mos"], t.get("std"), "livec", (0, 100), False, image_root)


def read_agiqa3k(path: str | os.PathLike, image_root: str | None = None) -> pd.DataFrame:
    t = _read(path)
    return _table(
        t["name"], t["mos_quality"], t.get("std_quality"), "agiqa3k", (0, 5), False, image_root
    )


def read_ava(path: str | os.PathLike, image_root: str | None = None) -> pd.DataFrame:
    t = pd.read_csv(path, sep=r"\s+", header=None)
    counts = t.iloc[:, 2:12].to_numpy(np.float64)
    scores = np.arange(1, 11, dtype=np.float64)
    total = counts.sum(1)
    valid = total > 0
    mos = (counts * scores).sum(1) / np.where(valid, total, 1)
    var = (counts * (scores - mos[:, None]) ** 2).sum(1) / np.where(valid, total, 1)
    t, mos, var = t[valid], mos[valid], var[valid]
    return _table(
        [f"{int(i)}.jpg" for i in t.iloc[:, 1]],
        mos,
        np.sqrt(var),
        "ava",
        (1, 10),
        False,
        image_root,
    )


def read_konvid1k(path: str | os.PathLike, video_root: str | None = None) -> pd.DataFrame:
    t = _read(path)
    std = t["sd"] if "sd" in t else t.get("SD")
    return _table(
        [f"{i}.mp4" for i in t["flickr_id"]], t["mos"], std, "konvid1k", (1, 5), False, video_root
    )


def read_generic(
    path: str | os.PathLike,
    dataset: str,
    scale: tuple[float, float],
    image_root: str | None = None,
    path_col: str = "path",
    mos_col: str = "mos",
    std_col: str | None = "std",
    lower_better: bool = False,
    content_col: str | None = None,
) -> pd.DataFrame:
    """Any CSV / Parquet / JSONL with a path column and a MOS column."""
    t = _read(path)
    std = t[std_col] if std_col and std_col in t else None
    content = t[content_col] if content_col else None
    return _table(t[path_col], t[mos_col], std, dataset, scale, lower_better, image_root, content)


READERS: dict[str, Callable[..., pd.DataFrame]] = {
    "koniq10k": read_koniq,
    "spaq": read_spaq,
    "kadid10k": read_kadid,
    "live": read_live,
    "csiq": read_csiq,
    "tid2013": read_tid2013,
    "livec": read_livec,
    "agiqa3k": read_agiqa3k,
    "ava": read_ava,
    "konvid1k": read_konvid1k,
}
"""Dataset name → reader (``read_mos_table(name, path, ...)``)."""

SYNTHETIC = {"kadid10k", "live", "csiq", "tid2013"}
"""Datasets made by distorting reference images: split by reference content."""


def read_mos_table(name: str, path: str | os.PathLike, **kwargs: Any) -> pd.DataFrame:
    """Read a dataset's published MOS file by dataset name (or ``generic``)."""
    if name == "generic":
        return read_generic(path, **kwargs)
    try:
        reader = READERS[name.lower().replace("-", "").replace("_", "")]
    except KeyError:
        raise ValueError(
            f"unknown MOS format {name!r}; known: {sorted(READERS)} or generic"
        ) from None
    return reader(path, **kwargs)


def assign_splits(
    table: pd.DataFrame,
    fractions: tuple[float, float, float] = (0.7, 0.1, 0.2),
    seed: int = 0,
    by_content: bool | None = None,
) -> pd.DataFrame:
    """Fill ``split`` with train / val / test: random by image, or by ``content_id`` (default
    for synthetic datasets) so no reference content is in two splits. Deterministic per seed;
    the seed and rule are recorded in ``table.attrs["split"]``."""
    if abs(sum(fractions) - 1.0) > 1e-9:
        raise ValueError("split fractions must sum to 1")
    out = table.copy()
    name = str(out["dataset"].iloc[0]) if len(out) else ""
    if by_content is None:
        by_content = "content_id" in out and name in SYNTHETIC
    units = out["content_id"] if by_content else out["path"]
    unique = np.array(sorted(units.unique()))
    rng = np.random.default_rng(seed)
    order = unique[rng.permutation(len(unique))]
    n_train, n_val, _ = split_counts(len(order), fractions)
    train, val, test = SPLITS
    label = {u: train for u in order[:n_train]}
    label.update({u: val for u in order[n_train : n_train + n_val]})
    label.update({u: test for u in order[n_train + n_val :]})
    out["split"] = units.map(label).to_numpy()
    out.attrs["split"] = {"seed": seed, "fractions": list(fractions), "by_content": by_content}
    return out
