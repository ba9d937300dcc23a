import json

import pytest
import torch

from ardiff.data.fashion_mnist import DEBIAN_DIR, FashionMNIST
from ardiff.eval.evaluate import evaluate, image_metrics, moving_fmnist_motion, moving_fmnist_test_clips, video_metrics
from ardiff.eval.features import FMNISTFeatures
from ardiff.eval.fmnist_classifier import ASSET, FashionMNISTClassifier, classify, to_classifier_input
from ardiff.generate import Pipeline, SamplingSettings
from ardiff.models.checkpoint import load_extras
from ardiff.models.resolve import resolve_model_dir

HAVE_FMNIST = (DEBIAN_DIR / "t10k-images-idx3-ubyte.gz").is_file()
needs_fmnist = pytest.mark.skipif(not HAVE_FMNIST, reason="Debian package dataset-fashion-mnist not installed")


def test_crop_follows_the_item():
    canvas = -torch.ones(2, 1, 40, 40)
    item = torch.rand(1, 28, 28) * 2 - 1
    canvas[0, :, 3:31, 10:38] = item
    canvas[1, :, 12:40, 0:28] = item
    crops = to_classifier_input(canvas)
    assert crops.shape == (2, 1, 28, 28)
    assert torch.allclose(crops[0], crops[1])
    with pytest.raises(ValueError, match="classifier input must be"):
        to_classifier_input(torch.zeros(2, 3, 28, 28))


@needs_fmnist
@pytest.mark.skipif(not ASSET.is_file(), reason="classifier asset not trained yet")
def test_shipped_classifier_accuracy():
    test = FashionMNIST(split="test")
    clf = FashionMNISTClassifier.load()
    _, logits = classify(clf, test.images.float() / 127.5 - 1)
    acc = float((logits.argmax(1) == test.labels).float().mean())
    assert acc >= 0.90
    report = json.loads(ASSET.with_suffix(".json").read_text())
    assert abs(report["test_accuracy"] - acc) < 1e-6


@needs_fmnist
def test_metrics_on_real_data_with_a_random_network():
    torch.manual_seed(0)
    clf = FMNISTFeatures.from_model(FashionMNISTClassifier().eval())
    test = FashionMNIST(split="test", pad_to=32)
    x = test.images[:600].float() / 127.5 - 1
    y = test.labels[:600]
    same = image_metrics(x[:300], y[:300], x[300:], clf)
    noise = image_metrics(torch.rand(300, 1, 32, 32) * 2 - 1, y[:300], x[300:], clf)
    assert same["fid_fmnist"] < noise["fid_fmnist"]
    assert same["precision_fmnist"] > noise["precision_fmnist"]
    clips = x[:40].view(10, 4, 1, 32, 32).transpose(1, 2)  # 10 "videos" of 4 frames
    v = video_metrics(clips, y[:10], clips, clf)
    assert v["fvd_proxy_fmnist"] == pytest.approx(0.0, abs=1e-6)
    assert v["frame_consistency"] == pytest.approx(v["frame_consistency_real"])


@needs_fmnist
@pytest.mark.skipif(not ASSET.is_file(), reason="classifier asset not trained yet")
def test_image_reference_and_floor_are_framed_like_the_samples():
    # A 32x32 model draws items padded from 28: the test split and the floor's training images
    # must reach the classifier framed the same way, or the framing alone costs FID points.
    from ardiff.eval.evaluate import _default_real, _real_floor_samples
    from ardiff.eval.metrics import frechet_distance
    from ardiff.models.config import ACDiTConfig

    cfg = ACDiTConfig.preset("S", input_size=(32, 32), in_channels=1, patch_size=4, block_size=16, num_classes=10)
    reference = _default_real(cfg)
    floor, _ = _real_floor_samples(cfg, None, 200)
    assert reference.shape[1:] == floor.shape[1:] == (1, 32, 32)
    padded = FashionMNIST(split="train", pad_to=32)
    assert torch.equal(floor[0], padded.images[torch.nonzero(padded.labels == 0)[0, 0]].float() / 127.5 - 1)
    network = FMNISTFeatures()
    f_ref, _ = network(reference[:2000])
    f_floor, _ = network(floor)
    f_native, _ = network(FashionMNIST(split="test").images[:2000].float() / 127.5 - 1)
    # Framed alike, real images sit at the floor; the old mixed framing sat at 3x it.
    assert frechet_distance(f_ref, f_floor) < 0.5 * frechet_distance(f_native, f_floor)


@needs_fmnist
def test_reference_clips_move_like_the_training_clips():
    with pytest.raises(ValueError, match="records no training data"):
        moving_fmnist_motion(None)
    with pytest.raises(ValueError, match="trained on 'fashion_mnist'"):
        moving_fmnist_motion({"name": "fashion_mnist", "speed": 2.0})
    motion = moving_fmnist_motion(load_extras(resolve_model_dir("moving-fmnist"))["data"])
    assert motion == {"speed": 1.0, "num_items": 1}  # the shipped model's training clips
    slow, labels = moving_fmnist_test_clips(3, 6, 32, **motion)
    fast, same_labels = moving_fmnist_test_clips(3, 6, 32, speed=2.0)
    assert torch.equal(labels, same_labels) and torch.equal(slow[:, :, 0], fast[:, :, 0])  # same items, same start
    assert not torch.equal(slow[:, :, 5], fast[:, :, 5])


def test_shipped_models_record_valid_sampling_settings_and_data():
    for name in ("fmnist", "fmnist-fast", "moving-fmnist", "moving-fmnist-16", "moving-fmnist-16-dit"):
        SamplingSettings.recorded(resolve_model_dir(name))  # raises on an unknown key or sampler
        assert load_extras(resolve_model_dir(name))["data"]["name"] in ("fashion_mnist", "moving_fashion_mnist")


def test_eval_of_a_video_model_without_recorded_data_fails_before_sampling(monkeypatch):
    import ardiff.eval.evaluate as ev
    from helpers import tiny_model

    def must_not_sample(*args, **kwargs):
        raise AssertionError("sampled before checking the reference clips")

    monkeypatch.setattr(ev, "sample_for_eval", must_not_sample)
    model = tiny_model(input_size=(4, 32, 32), in_channels=1, patch_size=8, block_layout="raster", block_size=16,
                       rope_axis_weights=(2, 1, 1))
    with pytest.raises(ValueError, match="records no training data"):
        evaluate(Pipeline(model), num=10)
