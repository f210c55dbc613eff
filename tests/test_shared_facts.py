"""Facts defined once: CLIP normalisation, open_clip input sizes, MOS orientation, the prompts,
the strict-load report."""

import numpy as np
import pandas as pd
import pytest

from vqpipe.errors import key_report
from vqpipe.eval.evaluate import oriented_mos
from vqpipe.prompts import COMPARE_PROMPT, qalign_answer, qalign_prompt, qalign_question


def test_mplug_owl2_normalises_with_open_clips_openai_constants():
    """The processor writes them out (its module runs in the CPU decode workers, which should
    not import open_clip); they must stay open_clip's."""
    import open_clip

    from vqpipe.models.mplug_owl2.processor import CLIP_MEAN, CLIP_STD

    assert CLIP_MEAN == open_clip.OPENAI_DATASET_MEAN
    assert CLIP_STD == open_clip.OPENAI_DATASET_STD


def test_clip_image_size_reads_the_open_clip_config():
    from vqpipe.models.gamma import clip_image_size

    assert clip_image_size("ViT-B-16") == 224
    assert clip_image_size("ViT-L-14-336") == 336
    assert clip_image_size("no-such-model") == 224  # open_clip's default


def test_oriented_mos_flips_dmos_on_its_scale_else_negates_it():
    table = pd.DataFrame(
        {
            "mos": [1.0, 4.0, 20.0, 30.0],
            "lower_better": [False, False, True, True],
            "scale_low": [1.0, 1.0, 0.0, np.nan],
            "scale_high": [5.0, 5.0, 100.0, np.nan],
        }
    )
    np.testing.assert_array_equal(oriented_mos(table), [1.0, 4.0, 80.0, -30.0])
    no_scale = table.drop(columns=["scale_low", "scale_high"])
    np.testing.assert_array_equal(oriented_mos(no_scale), [1.0, 4.0, -20.0, -30.0])
    np.testing.assert_array_equal(oriented_mos(table[["mos"]]), table["mos"])


def test_prompts_are_built_from_one_question_and_answer():
    assert qalign_prompt("video") == (
        f"USER: {qalign_question('video')}\n<|image|>\nASSISTANT: {qalign_answer('video')}"
    )
    assert qalign_answer("aesthetics") == "The aesthetics of the image is"
    with pytest.raises(ValueError, match="unknown Q-Align task 'x'"):
        qalign_question("x")
    assert COMPARE_PROMPT.count("<|image|>") == 2


def test_key_report_names_every_kind_of_difference():
    assert key_report([], [], {}) == ""
    report = key_report(["b", "a"], ["z"], {"w": ((3, 3), (4, 4))}, shown=1)
    assert report.splitlines() == [
        "1 wrong shape: w: checkpoint (3, 3), model (4, 4)",
        "2 missing: a; ... (2 in all)",
        "1 unexpected: z",
    ]
