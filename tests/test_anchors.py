"""Compare2Score anchor selection: equal MOS intervals, least rating variance."""

import numpy as np
import pandas as pd
import pytest

from vqpipe.scoring import select_anchors


def test_picks_least_variance_per_interval():
    table = pd.DataFrame(
        {
            "path": [f"img{i}" for i in range(10)],
            # range 1..5 → intervals [1,1.8) [1.8,2.6) [2.6,3.4) [3.4,4.2) [4.2,5]
            "mos": [1.0, 1.5, 2.0, 2.5, 2.7, 3.3, 3.5, 4.1, 4.5, 5.0],
            "std": [0.5, 0.2, 0.4, 0.3, 0.6, 0.1, 0.3, 0.3, 0.2, 0.4],
        }
    )
    anchors = select_anchors(table, alpha=5, beta=1)
    assert anchors["path"].tolist() == ["img1", "img3", "img5", "img6", "img8"]
    assert anchors["interval"].tolist() == [0, 1, 2, 3, 4]
    assert np.all(np.diff(anchors["mos"]) > 0)


def test_ties_are_deterministic_and_beta_two():
    table = pd.DataFrame(
        {"path": list("abcdef"), "mos": [1, 1.2, 1.1, 3, 2.9, 3.0], "std": [0.1] * 6}
    )
    anchors = select_anchors(table, alpha=2, beta=2)
    # Equal std: lower MOS first, then table order.
    assert anchors["path"].tolist() == ["a", "c", "e", "d"]
    assert select_anchors(table, alpha=2, beta=2).equals(anchors)


def test_empty_interval_warns():
    table = pd.DataFrame({"mos": [1.0, 1.1, 4.9, 5.0], "std": [0.1, 0.2, 0.3, 0.1]})
    with pytest.warns(UserWarning, match="fewer than"):
        anchors = select_anchors(table, alpha=5, beta=1)
    assert len(anchors) == 2


def test_missing_columns_raise():
    with pytest.raises(ValueError, match="std"):
        select_anchors(pd.DataFrame({"mos": [1.0, 2.0]}))
