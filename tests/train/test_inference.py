"""train.inference.predict_slices: the one slice-prediction routine of `train eval` and `train predict`."""
from __future__ import annotations

import numpy as np
import torch

from train.inference import Inference, combine_class_logits, predict_slices
from train.model import PromptSAM, build_sam
from train.resize import scale_points


def _inference(num_classes=None):
    model = PromptSAM(build_sam("tiny", None, 32, seed=4, num_classes=num_classes)).eval()
    return Inference(model, torch.device("cpu"), batch_size=4, decode_batch=2)


def test_predict_slices_decodes_each_class_from_all_its_points():
    inf = _inference()
    rng = np.random.default_rng(0)
    images = rng.random((3, 40, 24)).astype(np.float32)        # not square: resized to 32 and back
    prompts = [{1: np.array([[3.0, 5.0]]), 2: np.array([[10.0, 30.0], [12.0, 20.0]])},
               {},                                              # no clicks: stays 0
               {2: np.array([[20.0, 8.0]])}]
    with torch.inference_mode():
        got = predict_slices(inf, images, prompts)
        emb = inf.encode(images)

        def logits(j, xy):
            pts = scale_points(np.asarray(xy, np.float64), (40, 24), 32)[None].astype(np.float32)
            return inf.decode_prompts(emb, np.array([j]), pts, np.ones((1, len(xy)), np.int64), (40, 24))[0]

        want0 = combine_class_logits([1, 2], np.stack([logits(0, [[3, 5]]), logits(0, [[10, 30], [12, 20]])]), (40, 24))
        want2 = combine_class_logits([2], logits(2, [[20, 8]])[None], (40, 24))
    assert got.shape == (3, 40, 24) and got.dtype == np.uint8
    assert np.array_equal(got[0], want0) and np.array_equal(got[2], want2)
    assert not got[1].any()
    assert set(np.unique(got[0])) == {0, 1, 2} and set(np.unique(got[2])) == {0, 2}   # not vacuous: both classes win pixels


def test_predict_slices_promptless_is_the_argmax():
    inf = _inference(num_classes=2)
    images = np.random.default_rng(1).random((2, 32, 32)).astype(np.float32)
    with torch.inference_mode():
        got = predict_slices(inf, images, None)
        want = inf.model.forward_promptless(torch.from_numpy(images)[:, None]).argmax(1).numpy()
    assert np.array_equal(got, want.astype(np.uint8))
