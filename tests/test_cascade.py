"""Cascaded scoring: the when= pool option (grammar, gate, job) and vqpipe cascade plan."""

import itertools
import json

import numpy as np
import pytest

from vqpipe.cli import main
from vqpipe.data import make_image_dataset
from vqpipe.errors import UserError
from vqpipe.pipeline.cascade import CARRIED, gate_batch, parse_when, restore_rows
from vqpipe.pipeline.config import JobConfig, ScorerOptions
from vqpipe.rewards.cascade import evaluate_band, plan_band
from vqpipe.storage import read_quality_table

# ---- the predicate ---------------------------------------------------------------------


def test_when_grammar_and_null_logic():
    p = parse_when("gamma_score BETWEEN .35 and 0.65 or (not x < 1 and y is not null)")
    assert p.columns == ["gamma_score", "x", "y"]
    assert p.canonical == "(gamma_score between 0.35 and 0.65 or (not x < 1.0 and y is not null))"
    batch = {
        "gamma_score": np.array([0.1, 0.5, np.nan, 0.9, 0.35]),
        "x": np.array([2.0, 0.0, 2.0, np.nan, 0.0]),
        "y": np.array([1.0, 1.0, np.nan, 1.0, np.nan]),
    }
    assert p.evaluate(batch).tolist() == [True, True, False, False, True]
    # SQL's three-valued logic: a NULL compared is unknown, and not(unknown) stays unknown
    nulls = {"a": np.array([np.nan, 1.0]), "b": np.array([1.0, np.nan])}
    assert parse_when("not a > 0").evaluate(nulls).tolist() == [False, False]
    assert parse_when("a > 0 or b > 0").evaluate(nulls).tolist() == [True, True]
    assert parse_when("a is null").evaluate(nulls).tolist() == [True, False]
    assert parse_when("a != 1 and b = 1").evaluate(nulls).tolist() == [False, False]
    objects = {"a": np.array([None, 0.5], dtype=object)}  # NULLs as they may come from Arrow
    assert parse_when("a >= -1e-3").evaluate(objects).tolist() == [False, True]


@pytest.mark.parametrize(
    "text",
    ["gamma_score >", "gamma_score between 1", "(a < 1", "a < 1 b", "__import__('os')", "a < 'x'"],
)
def test_when_syntax_errors_are_one_line(text):
    with pytest.raises(UserError, match="when="):
        parse_when(text)


def test_when_option_parsing():
    spec = ScorerOptions.parse("qalign:when=gamma_score between 0.35 and 0.65,batch_size=4")
    assert spec.when == "gamma_score between 0.35 and 0.65" and spec.batch_size == 4
    assert spec.options == {}
    assert ScorerOptions.parse("gamma").when is None


@pytest.mark.parametrize(
    "scorers, message",
    [
        (["gamma", "brightness:when=gamma_score >"], "expected a number"),
        (["gamma", "brightness:when=gama_score > 0.5"], "'gama_score' is not a score column"),
        (["brightness:when=gamma_score > 0.5", "gamma"], "listed after it"),
        (["gamma", "brightness:when=brightness_score > 0.5"], "listed after it"),
        (["gamma", "brightness:when=gamma_probs > 0.5"], "not a score column"),
    ],
)
def test_when_errors_through_the_cli(scorers, message, tmp_path, capsys):
    (tmp_path / "in").mkdir()
    args = ["score", str(tmp_path / "in"), "--out", str(tmp_path / "q")]
    assert main([*args, *(a for s in scorers for a in ("--scorer", s))]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("vqpipe: error: ") and "\n" not in err and message in err
    assert not (tmp_path / "q").exists()  # refused before Ray or anything written


def test_when_is_in_the_part_signature():
    from vqpipe.pipeline.job import ScoreJob

    def sig(*scorers):
        config = JobConfig(".", "out", scorers=[ScorerOptions.parse(s) for s in scorers])
        return ScoreJob().signature(config)["scorers"]

    plain = sig("gamma", "brightness")
    band = sig("gamma", "brightness:when=gamma_score between 0.35 and 0.65")
    same = sig("gamma", "brightness:when=gamma_score BETWEEN .35 AND .650")
    other = sig("gamma", "brightness:when=gamma_score between 0.3 and 0.65")
    assert "when" not in plain[1] and band[0] == plain[0]  # old signatures stay as they were
    assert band == same and band != other and band != plain


# ---- the gate ---------------------------------------------------------------------------


def _batch(n, scores):
    pixels = np.empty(n, dtype=object)
    pixels[:] = [np.full((1, 3, 2, 2), i, np.uint8) for i in range(n)]
    return {
        "uri": np.array([f"u{i}" for i in range(n)], dtype=object),
        "gamma_score": np.array(scores, np.float32),
        "_input_brightness": pixels,
        "error": np.full(n, None, dtype=object),
    }


def test_gate_holds_rows_back_and_restores_them():
    spec = ScorerOptions.parse("brightness:when=gamma_score between 0.4 and 0.6")
    scores = [0.5, 0.1, np.nan, 0.45, 0.9]
    block = gate_batch(_batch(5, scores), spec).to_pydict()
    # the pool gets the two rows in the band and one carrier row, with no pixels
    assert block["uri"][:2] == ["u0", "u3"] and len(block["uri"]) == 3
    assert block["brightness_skipped"] == [False, False, True]
    assert [len(x) for x in block["_input_brightness"]] == [1, 1, 0]
    carried = np.empty(3, dtype=object)
    carried[:] = block[CARRIED]
    scored = {
        "uri": np.array(block["uri"], dtype=object),
        "gamma_score": np.array(block["gamma_score"], np.float32),
        "brightness_skipped": np.array(block["brightness_skipped"]),
        "brightness_score": np.array([0.7, 0.8, np.nan], np.float32),  # the pool's outputs
        "error": np.full(3, None, dtype=object),
        CARRIED: carried,
    }
    out = restore_rows(scored)
    assert CARRIED not in out and sorted(out["uri"]) == [f"u{i}" for i in range(5)]
    pairs = zip(out["brightness_score"], out["brightness_skipped"], strict=True)
    by_uri = dict(zip(out["uri"], pairs, strict=True))
    assert by_uri["u0"] == (pytest.approx(0.7), False)
    assert np.isnan(by_uri["u1"][0]) and by_uri["u1"][1] and by_uri["u2"][1]
    assert by_uri["u4"][1] and np.isnan(by_uri["u4"][0])
    # a block with nothing held back: as it was, with an empty carrier column
    block = gate_batch(_batch(2, [0.5, 0.41]), spec).to_pydict()
    assert block["uri"] == ["u0", "u1"] and block[CARRIED] == [b"", b""]


def _numpy(block):
    """An Arrow block as the numpy batch the next stage gets (object columns kept)."""
    out = {}
    for name, values in block.to_pydict().items():
        column = np.empty(len(values), dtype=object)
        column[:] = values
        out[name] = column if name in (CARRIED, "uri", "error") or "_input_" in name else None
        if out[name] is None:
            out[name] = np.array([np.nan if v is None else v for v in values])
    return out


def test_chained_gates_see_every_row():
    """A second when= pool's gate unpacks the rows the first one held back (their first-pool
    columns NULL), decides on all of them, and the write gets every row back once."""
    first = ScorerOptions.parse("brightness:when=gamma_score > 0.5")
    second = ScorerOptions.parse("qalign:when=gamma_score < 0.3 or brightness_score > 0.5")
    batch = _batch(6, [0.9, 0.1, 0.6, 0.2, 0.4, np.nan])
    batch["_input_qalign"] = batch["_input_brightness"].copy()
    after = _numpy(gate_batch(batch, first))
    after["brightness_score"] = np.where(after["brightness_skipped"], np.nan, 0.7)
    after.pop("_input_brightness")
    block = _numpy(gate_batch(after, second))
    # sent on to qalign: gamma > 0.5 (brightness 0.7) and gamma < 0.3 (u1, u3)
    assert sorted(block["uri"][:-1]) == ["u0", "u1", "u2", "u3"]
    block["qalign_score"] = np.where(block["qalign_skipped"], np.nan, 3.0)
    out = restore_rows(block)
    assert sorted(out["uri"]) == [f"u{i}" for i in range(6)]
    rows = {u: i for i, u in enumerate(out["uri"])}
    assert [bool(out["brightness_skipped"][rows[f"u{i}"]]) for i in range(6)] == [
        False,
        True,
        False,
        True,
        True,
        True,
    ]
    assert [bool(out["qalign_skipped"][rows[f"u{i}"]]) for i in range(6)] == [
        False,
        False,
        False,
        False,
        True,
        True,
    ]
    assert np.isnan(out["qalign_score"][rows["u4"]]) and out["qalign_score"][rows["u1"]] == 3


# ---- the plan ---------------------------------------------------------------------------


def _brute_force(c, e, threshold, keep, target):
    """Every band between sample values (and the empty one): the fewest rows sent."""
    values = np.unique(c)
    bands = [(v, w) for v, w in itertools.combinations_with_replacement(values, 2)]
    empty = [values[0] - 1, values[-1] + 1, *((values[1:] + values[:-1]) / 2)]
    bands += [(v, v) for v in empty]  # no row sent on: a cut anywhere
    best = None
    for lo, hi in bands:
        band = evaluate_band(c, e, lo, hi, threshold, keep)
        if band.agreement >= target - 1e-12:
            key = (band.sent, -band.agreement)
            best = key if best is None or key < best else best
    return best


def test_a_when_pool_decodes_only_the_rows_its_gate_sends_on(tmp_path, monkeypatch):
    """Decode tasks send a when= pool's images on undecoded; after the gate, only the rows
    sent on are decoded, to the very pixels (and errors) of the in-task path."""
    from PIL import Image
    from ray.data.block import BlockAccessor

    from vqpipe.media.decode import MediaLimits
    from vqpipe.pipeline import score_stage
    from vqpipe.pipeline.decode_stage import decode_batch, decode_deferred
    from vqpipe.pipeline.pixels import column_items

    rng = np.random.default_rng(3)
    uris = []
    for k, fmt in enumerate(["jpeg", "png", "jpeg", "webp"]):
        path = tmp_path / f"{k}.{fmt}"
        Image.fromarray(rng.integers(0, 255, (40, 56, 3), np.uint8)).save(path, fmt.upper())
        uris.append(str(path))
    (tmp_path / "bad.jpeg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    uris.append(str(tmp_path / "bad.jpeg"))
    batch = {"uri": np.array(uris, object), "media_type": np.array(["image"] * 5, object)}
    first = ScorerOptions("brightness", {"size": 8})
    later = ScorerOptions.parse("brightness:size=16,column=later,when=brightness_score > 0.5")
    plain = ScorerOptions("brightness", {"size": 16}, column="later")
    limits = MediaLimits()
    reference = decode_batch(dict(batch), [first, plain], {}, 1.0, limits)
    out = decode_batch(dict(batch), [first, later], {}, 1.0, limits)
    good = [e is None for e in out["error"]]
    assert good == [True, True, True, True, False]
    assert [bool(len(b)) for b in out["_defer_later"]] == good  # bytes on, not decoded
    assert all(x is None for x in out["_input_later"])
    assert list(out["_input_brightness"][:4]) and list(out["error"]) == list(reference["error"])
    out["brightness_score"] = np.array([0.9, 0.1, 0.7, 0.2, np.nan])  # the first pool's
    gated = BlockAccessor.for_block(gate_batch(out, later)).to_batch_format("numpy")
    decoded = []
    real = score_stage.decode_image  # the deferred rows' decoder (cpu_pixels)
    monkeypatch.setattr(
        score_stage, "decode_image", lambda data, *a: decoded.append(data) or real(data, *a)
    )
    block = decode_deferred(gated, later, {}, limits)
    after = restore_rows(BlockAccessor.for_block(block).to_batch_format("numpy"))
    assert len(decoded) == 2  # the two rows sent on, nothing else
    order = {u: i for i, u in enumerate(after["uri"])}
    pixels = column_items(after["_input_later"])
    for k in (0, 2):
        np.testing.assert_array_equal(pixels[order[uris[k]]], reference["_input_later"][k])
    for k in (1, 3, 4):
        assert pixels[order[uris[k]]] is None
    assert "_defer_later" not in after


@pytest.mark.parametrize("seed", range(12))
def test_plan_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 40))
    c = np.round(rng.random(n), 1 if seed % 3 == 0 else 3)  # ties in some
    e = c + rng.normal(0, 0.2, n)
    keep = "above" if seed % 2 else "below"
    target = float(rng.choice([0.8, 0.9, 0.95, 1.0]))
    band = plan_band(c, e, 0.5, keep, target)
    assert band.agreement >= target - 1e-12
    assert (band.sent, -band.agreement) == _brute_force(c, e, 0.5, keep, target)
    again = evaluate_band(c, e, band.lo, band.hi, 0.5, keep)
    assert (again.sent, again.agreement) == (band.sent, band.agreement)


def test_plan_hand_worked():
    # cheap   0.1  0.2  0.3  0.4  0.5  0.6  0.7  0.8  0.9  1.0
    # keep?    n    n    y    n    y    n    y    y    y    y     (expensive >= 0.5)
    c = np.arange(1, 11) / 10
    e = np.array([0, 0, 1, 0, 1, 0, 1, 1, 1, 1], float)
    # all right: the band must hold every row between the first kept and the last dropped
    band = plan_band(c, e, 0.5, "above", 1.0)
    assert (band.lo, band.hi, band.sent, band.agreement) == (0.3, 0.6, 0.4, 1.0)
    # 90%: one error allowed; [0.3, 0.4] (0.6 decided "keep": wrong) and [0.5, 0.6] (0.3
    # decided "drop": wrong) send 2 each: the ties go to the lower band
    band = plan_band(c, e, 0.5, "above", 0.9)
    assert (band.lo, band.hi, band.sent, band.agreement) == (0.3, 0.4, 0.2, 0.9)
    # 70%: three errors allowed: no row sent on, a cut between 0.2 and 0.3 or 0.6 and 0.7
    band = plan_band(c, e, 0.5, "above", 0.7)
    assert band.sent == 0 and band.agreement >= 0.7 and band.lo == band.hi


def _write_sample(path, cheap, expensive):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"gamma_score": cheap, "qalign_score": expensive}), path)


def test_plan_command(tmp_path, capsys):
    c = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, None]
    e = [0.0, 0.0, 1.0, 0.0, 1.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0]
    _write_sample(tmp_path / "s.parquet", c, e)
    args = ["cascade", "plan", str(tmp_path / "s.parquet"), "--cheap", "gamma_score"]
    args += ["--expensive", "qalign_score", "--threshold", "0.5"]
    assert main([*args, "--target", "0.9", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert (plan["lo"], plan["hi"], plan["sent"], plan["agreement"]) == (0.3, 0.4, 0.2, 0.9)
    assert plan["rows"] == 10 and plan["rows_without_both"] == 1
    assert plan["scorer"] == "--scorer 'qalign:when=gamma_score between 0.3 and 0.4'"
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "100.00% of 10 rows (target 99.00%)" in out and "40.00% of the rows" in out
    assert "--scorer 'qalign:when=gamma_score between 0.3 and 0.6'" in out


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--cheap", "gamma_scor", "--expensive", "qalign_score"], "did you mean 'gamma_score'"),
        (["--cheap", "gamma_score", "--expensive", "q", "--target", "0"], "(0, 1]"),
        (["--cheap", "gamma_score", "--expensive", "q", "--target", "1.5"], "(0, 1]"),
    ],
)
def test_plan_user_errors(extra, message, tmp_path, capsys):
    _write_sample(tmp_path / "s.parquet", [0.1, 0.2], [0.3, 0.4])
    args = ["cascade", "plan", str(tmp_path / "s.parquet"), "--threshold", "0.5", *extra]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("vqpipe: error: ") and "\n" not in err and message in err


def test_plan_empty_sample(tmp_path, capsys):
    _write_sample(tmp_path / "s.parquet", [None, 0.2], [0.3, None])
    args = ["cascade", "plan", str(tmp_path / "s.parquet"), "--threshold", "0.5"]
    assert main([*args, "--cheap", "gamma_score", "--expensive", "qalign_score"]) == 2
    assert "no row has both" in capsys.readouterr().err


# ---- the job ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("cascade")
    make_image_dataset(root, n_contents=1, size=(64, 48), distortions=("jpeg", "gaussian_blur"))
    (root / "images" / "empty.jpg").write_bytes(b"")
    return root / "images"


def _score(corpus, out, *scorers):
    args = ["score", str(corpus), "--out", str(out), "--rows-per-file", "4", "-q"]
    return main([*args, *(a for s in scorers for a in ("--scorer", s))])


def _calls(folder):
    return sum(int(p.read_text()) for p in folder.iterdir())


@pytest.mark.slow
def test_cascade_job_end_to_end(ray_local, corpus, tmp_path, capsys):
    """Rows outside the band: NULL + skipped, never scored; inside: as without when=; one
    row per input; a no-op resume; another when= refused like another option; the plan."""
    everything, cascade = tmp_path / "all", tmp_path / "cascade"
    for folder in ("calls-all", "calls", "prep-all", "prep"):
        (tmp_path / folder).mkdir()
    pool = "brightness:latency_s=0.001,calls_dir="
    every = f"{pool}{tmp_path / 'calls-all'},preprocess_dir={tmp_path / 'prep-all'}"
    assert _score(corpus, everything, "gamma", every) == 0
    full = read_quality_table(str(everything)).set_index("uri")
    ok = full["error"].isna()
    lo, hi = full.loc[ok, "gamma_score"].quantile([0.25, 0.75])
    when = f"gamma_score between {lo!r} and {hi!r}"
    banded = f"{pool}{tmp_path / 'calls'},preprocess_dir={tmp_path / 'prep'}"
    brightness = f"{banded},when={when}"
    assert _score(corpus, cascade, "gamma", brightness) == 0
    table = read_quality_table(str(cascade)).set_index("uri")
    assert sorted(table.index) == sorted(full.index) and table.index.is_unique
    table = table.loc[full.index]
    inside = full["gamma_score"].between(lo, hi)  # NULL (the empty file): not inside
    assert 0 < inside.sum() < ok.sum()
    assert (table["brightness_skipped"] == ~inside).all()
    assert table.loc[~inside, "brightness_score"].isna().all()
    assert table.loc[~inside, "brightness_probs"].isna().all()
    assert table.loc[~inside & ok, "error"].isna().all()  # skipped is not an error
    assert np.array_equal(
        table.loc[inside, "brightness_score"], full.loc[inside, "brightness_score"]
    )
    assert np.array_equal(table["gamma_score"].fillna(-1), full["gamma_score"].fillna(-1))
    assert _calls(tmp_path / "calls") == inside.sum()  # the pool scored the band only
    assert _calls(tmp_path / "calls-all") == ok.sum()
    # decoded and preprocessed for the pool after its gate: the band only, never the rest
    assert len(list((tmp_path / "prep").iterdir())) == inside.sum()
    assert len(list((tmp_path / "prep-all").iterdir())) == ok.sum()
    # a no-op resume: the skipped rows are done, nothing is scored again
    assert _score(corpus, cascade, "gamma", brightness) == 0
    assert _calls(tmp_path / "calls") == inside.sum()
    assert len(read_quality_table(str(cascade))) == len(full)
    # another band is another job: refused on the same table, like another scorer option
    capsys.readouterr()
    assert _score(corpus, cascade, "gamma", f"{banded},when=gamma_score > 0") == 2
    assert "results of other scorers" in capsys.readouterr().err
    record = json.loads((cascade / "_job.json").read_text())
    assert record["scorers"]["brightness"]["when"] == when
    assert "brightness_skipped" in record["scorers"]["brightness"]["columns"]
    # the plan, on the table scored with both
    args = ["cascade", "plan", str(everything), "--cheap", "gamma_score", "--expensive"]
    assert main([*args, "brightness_score", "--threshold", "0.4", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["agreement"] >= 0.99 and plan["scorer"].startswith("--scorer 'brightness:when=")


@pytest.mark.slow
def test_cascade_after_a_pool_that_scores_in_the_decode_tasks(ray_local, corpus, tmp_path):
    """The gate as a task after the decode tasks: brightness (no actor) decides for Gamma."""
    from PIL import Image

    from vqpipe.scorers.brightness import BrightnessScorer

    images = [Image.open(p) for p in sorted(corpus.glob("*.png"))]
    cut = float(np.median(BrightnessScorer().score(images)))
    out = tmp_path / "q"
    assert _score(corpus, out, "brightness", f"gamma:when=brightness_score >= {cut!r}") == 0
    table = read_quality_table(str(out))
    assert table["uri"].is_unique and len(table) == len(list(corpus.iterdir()))
    inside = table["brightness_score"] >= cut
    assert (table["gamma_skipped"] == ~inside).all()
    assert table.loc[~inside, "gamma_score"].isna().all()
    assert table.loc[inside, "gamma_score"].notna().all() and 0 < inside.sum() < len(table)
