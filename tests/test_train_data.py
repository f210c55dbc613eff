"""MOS readers (published layouts, written here by hand), splits, and task builders."""

import numpy as np
import pandas as pd
import pytest

from vqpipe.train.mos_readers import COLUMNS, assign_splits, read_mos_table
from vqpipe.train.tasks import (
    compare2score_conversations,
    compare2score_pairs,
    oriented_mos,
    qalign_conversations,
    qalign_levels,
)


def write(path, text):
    path.write_text(text)
    return path


def test_readers_of_the_published_layouts(tmp_path):
    koniq = read_mos_table(
        "koniq10k",
        write(
            tmp_path / "k.csv",
            "image_name,c1,c2,c3,c4,c5,c_total,MOS,SD,MOS_zscore\n"
            "826373.jpg,0,0,25,73,7,105,3.828571,0.527,77.38\n",
        ),
        image_root="s3://d/koniq",
    )
    assert list(koniq.columns[: len(COLUMNS)]) == COLUMNS
    row = koniq.iloc[0]
    assert row["path"] == "s3://d/koniq/826373.jpg" and row["mos"] == pytest.approx(3.828571)
    assert (row["scale_low"], row["scale_high"], row["lower_better"]) == (1, 5, False)
    kadid = read_mos_table(
        "kadid10k",
        write(
            tmp_path / "dmos.csv", "dist_img,ref_img,dmos,var\nI01_01_01.png,I01.png,4.57,0.25\n"
        ),
    )
    assert kadid["std"].iloc[0] == pytest.approx(0.5) and kadid["content_id"].iloc[0] == "I01.png"
    live = read_mos_table(
        "live",
        write(tmp_path / "live.csv", "ref_name,dist_name,dmos\nbikes.bmp,jp2k/img1.bmp,30.0\n"),
    )
    assert bool(live["lower_better"].iloc[0])
    tid = read_mos_table(
        "tid2013",
        write(tmp_path / "mos_with_names.txt", "5.51429 i01_01_1.bmp\n5.56757 I01_01_2.bmp\n"),
        std_path=str(write(tmp_path / "mos_std.txt", "0.13\n0.14\n")),
    )
    assert tid["content_id"].tolist() == ["i01", "i01"] and tid["std"].tolist() == [0.13, 0.14]
    ava = read_mos_table(
        "ava",
        write(
            tmp_path / "AVA.txt",
            "1 953619 0 1 5 17 38 36 15 6 5 1 1 22 1396\n2 953958 0 0 0 0 0 0 0 0 0 0 1 21 1396\n",
        ),
    )
    counts = np.array([0, 1, 5, 17, 38, 36, 15, 6, 5, 1])
    assert len(ava) == 1  # an image without votes is skipped
    assert ava["mos"].iloc[0] == pytest.approx((counts * np.arange(1, 11)).sum() / counts.sum())
    konvid = read_mos_table("konvid1k", write(tmp_path / "kv.csv", "flickr_id,mos\n3337,3.6\n"))
    assert konvid["path"].iloc[0] == "3337.mp4"
    csiq = read_mos_table(
        "csiq", write(tmp_path / "csiq.csv", "image,dst_type,dst_lev,dmos\n1600,awgn,1,0.06\n")
    )
    assert csiq["path"].iloc[0] == "awgn/1600.awgn.1.png" and csiq["scale_high"].iloc[0] == 1
    agi = read_mos_table(
        "agiqa3k",
        write(
            tmp_path / "data.csv",
            "name,prompt,mos_quality,std_quality\nAttnGAN_normal_000.jpg,a cat,1.2,0.5\n",
        ),
    )
    assert agi["dataset"].iloc[0] == "agiqa3k"
    generic = read_mos_table(
        "generic",
        write(tmp_path / "g.csv", "file,score\na.png,70\n"),
        dataset="mine",
        scale=(0, 100),
        path_col="file",
        mos_col="score",
    )
    assert generic["mos"].iloc[0] == 70 and np.isnan(generic["std"].iloc[0])
    with pytest.raises(ValueError, match="unknown MOS format"):
        read_mos_table("nope", tmp_path / "g.csv")


def test_splits_by_content_for_synthetic_sets_and_by_image_otherwise():
    synth = pd.DataFrame(
        {
            "path": [f"{c}_{d}.png" for c in range(10) for d in range(4)],
            "mos": 3.0,
            "dataset": "kadid10k",
            "content_id": [str(c) for c in range(10) for _ in range(4)],
        }
    )
    out = assign_splits(synth, seed=3)
    assert out.groupby("content_id")["split"].nunique().max() == 1
    assert out.attrs["split"] == {"seed": 3, "fractions": [0.7, 0.1, 0.2], "by_content": True}
    assert (assign_splits(synth, seed=3)["split"] == out["split"]).all()
    authentic = synth.assign(dataset="koniq10k")
    counts = assign_splits(authentic, seed=1)["split"].value_counts()
    assert counts.to_dict() == {"train": 28, "test": 8, "val": 4}


def test_qalign_levels_and_conversations_by_hand():
    table = pd.DataFrame(
        {
            "path": ["a.jpg", "b.jpg", "c.jpg", "d.jpg"],
            "mos": [1.0, 1.8, 4.2, 10.0],
            "scale_low": [1, 1, 1, 0],
            "scale_high": [5, 5, 5, 100],
            "lower_better": [False] * 3 + [True],
        }
    )
    # 1–5: bounds 1.8, 2.6, 3.4, 4.2 (a boundary goes to the lower level); DMOS 10 of 100 → 90
    assert qalign_levels(table).tolist() == ["bad", "bad", "good", "excellent"]
    assert oriented_mos(table)[3] == 90
    rec = qalign_conversations(table.iloc[[2]])[0]
    assert rec["conversations"] == [
        {"from": "human", "value": "How would you rate the quality of this image?\n<|image|>"},
        {"from": "gpt", "value": "The quality of the image is good."},
    ]
    assert rec["image"] == "c.jpg" and rec["gt_score"] == 4.2
    video = qalign_conversations(table.iloc[[0]], task="video")[0]
    assert video["conversations"][1]["value"] == "The quality of the video is bad."


def test_compare2score_pairs_follow_the_sigma_rule():
    table = pd.DataFrame(
        {
            "path": ["lo.png", "hi.png"],
            "mos": [2.0, 4.0],
            "std": [0.5, 0.5],
            "dataset": "x",
            "scale_low": 1,
            "scale_high": 5,
            "lower_better": False,
        }
    )
    pairs = compare2score_pairs(table, n_pairs=50, seed=0)
    assert len(pairs) == 50 and (pairs["first"] != pairs["second"]).all()
    # q_ij = ±2, σ_ij = 0.707: |q| > 2σ → superior / inferior
    up = pairs[pairs["second"] == "hi.png"]
    assert set(up["level"]) == {4} and set(pairs.loc[pairs["second"] == "lo.png", "level"]) == {0}
    assert up["answer"].iloc[0] == "The quality of the second image is superior to the first image."
    conv = compare2score_conversations(pairs.iloc[:1])[0]
    assert conv["conversations"][0]["value"].startswith("<|image|> <|image|> Compared with")
    close = table.assign(mos=[3.0, 3.6])  # q = 0.6 ≤ σ_ij = 0.707 → similar
    assert set(compare2score_pairs(close, 10, seed=1)["level"]) == {2}
    with pytest.raises(ValueError, match="std"):
        compare2score_pairs(table.assign(std=np.nan), 5)
