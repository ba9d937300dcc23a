"""The Fig. 7 / Fig. 8 analyses run end to end on tiny settings and write JSON + PNG."""

import json

import pytest

from ardiff.data.fashion_mnist import DEBIAN_DIR
from ardiff.experiments.analyses import main, timing_config

pytest.importorskip("matplotlib")


def test_inference_time_quick(tmp_path):
    result = main("inference-time", tmp_path, quick=True, progress=False)
    rows = result["rows"]
    assert [(r["seq_len"], r["ar_length"]) for r in rows] == [(16, 1), (16, 4), (16, 16), (64, 1), (64, 4), (64, 16)]
    for r in rows:
        # the cache never adds FLOPs; at T = 1 both loops do the same work
        assert r["cached_gflop"] <= r["uncached_gflop"] + 1e-12
        if r["ar_length"] == 1:
            assert r["cached_gflop"] == pytest.approx(r["uncached_gflop"])
            assert r["cached_flop_model_s"] == pytest.approx(r["cached_s"])
    # 64 tokens, T = 1 vs 16: recomputing the context grows the work, the cache keeps it near flat
    t1, t16 = rows[3], rows[5]
    assert t16["uncached_gflop"] > 2 * t1["uncached_gflop"]
    assert t16["cached_gflop"] < 2 * t1["cached_gflop"]
    assert (tmp_path / "inference_time.png").stat().st_size > 10_000
    assert json.loads((tmp_path / "inference_time.json").read_text())["rows"] == rows


def test_timing_config_rejects_bad_lengths():
    assert timing_config(256, 16).block_size == 16
    with pytest.raises(ValueError, match="num_tokens=60 must be a square"):
        timing_config(60, 2)


@pytest.mark.skipif(not (DEBIAN_DIR / "train-images-idx3-ubyte.gz").is_file(), reason="needs dataset-fashion-mnist")
def test_block_size_quick(tmp_path):
    result = main("block-size", tmp_path, quick=True, progress=False)
    assert [r["ar_length"] for r in result["rows"]] == [1, 4]
    for r in result["rows"]:
        assert r["fid_fmnist"] > 0 and 0 <= r["class_accuracy"] <= 1
        cfg = json.loads((tmp_path / f"T{r['ar_length']:02d}" / "model" / "config.json").read_text())
        assert cfg["block_size"] == 64 // r["ar_length"] and cfg["depth"] == 1
    assert (tmp_path / "block_size.png").stat().st_size > 10_000
