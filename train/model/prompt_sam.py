"""PromptSAM: the batched SAM forward used by fit, eval and predict.

SAM's own ``Sam.forward`` takes lists of dicts and its ``MaskDecoder.predict_masks`` repeats the
image embedding once per prompt of ONE image. Training needs one prompt set per image for a batch
of images, so `decode` runs the decoder's modules on (B images, B prompt sets) without repeating.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from segment_anything.modeling import Sam
from torch import nn

from shared.errors import ConfigError

from .build import BuiltSam
from .encoders import forward_checkpointed
from .registry import MODEL_SPECS

NORMALISATIONS = ("sam", "minmax")


class PromptSAM(nn.Module):
    """Wraps the Sam of a `build_sam` result (a BuiltSam; a bare Sam with `num_classes` works too).

    Inputs are square single-channel images (B, 1, S, S) in [0, 1] with S = the model's img_size.
    Points are (x, y) in input pixel coordinates (0..S-1, the pixel's index; SAM adds 0.5 to reach
    its centre), point labels 1 = foreground, 0 = background.
    `num_classes`: the promptless head's class count (None: a prompted model); taken from a
    BuiltSam. `grad_checkpoint`: recompute encoder blocks in the backward pass (less memory, ~30%
    slower). `normalise` and `resize`: the input contract (train.model.registry.InputContract);
    taken from a BuiltSam's model spec.

    Frozen BatchNorm layers of the image encoder (TinyViT's) stay in eval mode in ``train()``:
    LoRA fine-tuning must not move their running statistics, which are part of the base weights.
    """

    def __init__(self, sam: BuiltSam | Sam, *, num_classes: int | None = None,
                 grad_checkpoint: bool = False, normalise: str | None = None,
                 resize: str | None = None) -> None:
        super().__init__()
        if isinstance(sam, BuiltSam):
            contract = MODEL_SPECS[sam.model].contract
            normalise, resize = normalise or contract.normalise, resize or contract.resize
            num_classes, sam = sam.num_classes, sam.sam
        normalise = normalise or "sam"
        if normalise not in NORMALISATIONS:
            raise ConfigError(f"normalise must be one of {', '.join(NORMALISATIONS)}, got {normalise!r}")
        self.sam = sam
        self.num_classes = num_classes
        self.grad_checkpoint = grad_checkpoint
        self.normalise = normalise
        self.resize = resize or "square"   # how slices become inputs (train.resize.InputGeometry)
        self.img_size = int(sam.image_encoder.img_size)

    def train(self, mode: bool = True) -> "PromptSAM":
        super().train(mode)
        if mode:
            for m in self.sam.image_encoder.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm) and \
                        not any(p.requires_grad for p in m.parameters()):
                    m.eval()
        return self

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """(B,1,S,S) in [0,1] -> (B,3,S,S) RGB input of the encoder.

        "sam": x255 and SAM's mean/std. "minmax": each image scaled by its own min and max
        (MedSAM's inference; an image with one value becomes 0)."""
        if images.ndim != 4 or images.shape[1] != 1:
            raise ConfigError(f"images must be (B, 1, S, S), got {tuple(images.shape)}")
        if images.shape[-2:] != (self.img_size, self.img_size):
            raise ConfigError(f"images are {tuple(images.shape[-2:])}, the model expects "
                              f"{self.img_size}x{self.img_size} (resize with train.resize)")
        if self.normalise == "minmax":
            flat = images.flatten(1)
            lo = flat.amin(1).view(-1, 1, 1, 1)
            span = (flat.amax(1).view(-1, 1, 1, 1) - lo).clamp(min=1e-8)
            return ((images - lo) / span).expand(-1, 3, -1, -1)
        x = images * 255.0
        return (x.expand(-1, 3, -1, -1) - self.sam.pixel_mean) / self.sam.pixel_std

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """(B,1,S,S) in [0,1] -> image embeddings (B, C, S/stride, S/stride)."""
        return self.encode_input(self.preprocess(images))

    def encode_input(self, x: torch.Tensor) -> torch.Tensor:
        """The image encoder on preprocessed (B,3,S,S) input (see `preprocess`)."""
        enc = self.sam.image_encoder
        if not (self.grad_checkpoint and self.training and torch.is_grad_enabled()):
            return enc(x)
        return forward_checkpointed(enc, x)

    def _decode_masks(self, embeddings: torch.Tensor, sparse: torch.Tensor,
                      dense: torch.Tensor, with_iou: bool = False):
        """MaskDecoder.predict_masks for one prompt set per image: all mask tokens' low-res logits
        (and, `with_iou`, the IoU head's predictions (B, num_mask_tokens)).

        Kept here on purpose: segment_anything's ``predict_masks`` serves N prompt sets of ONE
        image (``repeat_interleave(image_embeddings, tokens.shape[0])``); given B embeddings and B
        prompt sets it would pair every image with every prompt set (B*B rows). Calling it once
        per image would serialise the batch. The copy is pinned to segment_anything's
        ``MaskDecoder.forward`` run image by image (tests/train/model/test_prompt_sam.py), for
        points, boxes, multimask and the promptless head."""
        dec = self.sam.mask_decoder
        b = embeddings.shape[0]
        output_tokens = torch.cat([dec.iou_token.weight, dec.mask_tokens.weight], dim=0)
        output_tokens = output_tokens.unsqueeze(0).expand(b, -1, -1)
        tokens = torch.cat((output_tokens, sparse.to(output_tokens.dtype)), dim=1)
        src = embeddings + dense
        pos_src = self.sam.prompt_encoder.get_dense_pe().expand(b, -1, -1, -1)
        _, c, h, w = src.shape
        hs, src = dec.transformer(src, pos_src, tokens)
        mask_tokens_out = hs[:, 1:1 + dec.num_mask_tokens, :]
        src = src.transpose(1, 2).reshape(b, c, h, w)
        upscaled = dec.output_upscaling(src)
        hyper_in = torch.stack([mlp(mask_tokens_out[:, i, :])
                                for i, mlp in enumerate(dec.output_hypernetworks_mlps)], dim=1)
        _, c, h, w = upscaled.shape
        masks = (hyper_in @ upscaled.reshape(b, c, h * w)).reshape(b, -1, h, w)
        if with_iou:
            return masks, dec.iou_prediction_head(hs[:, 0, :])
        return masks

    def _upsample(self, low_res: torch.Tensor) -> torch.Tensor:
        return F.interpolate(low_res, (self.img_size, self.img_size), mode="bilinear",
                             align_corners=False)

    def prompt_embeddings(self, b: int, points: torch.Tensor | None, point_labels: torch.Tensor | None,
                          boxes: torch.Tensor | None, use_box: torch.Tensor | None) -> torch.Tensor:
        """Sparse prompt embeddings (B, T, C) of points and/or boxes (SAM's prompt encoder).

        points (B,P,2) xy pixels with labels (B,P); boxes (B,4) x0,y0,x1,y1 pixels. Both given:
        each image gets its points and its box (SAM's joint prompt), unless `use_box` (B,) bool
        picks one kind per image (a mixed training batch: one point or one box each, both two
        tokens: the point plus SAM's padding token, or the two corners)."""
        pe = self.sam.prompt_encoder
        if points is not None and (points.ndim != 3 or points.shape[-1] != 2 or points.shape[0] != b
                                   or point_labels is None or point_labels.shape != points.shape[:2]):
            raise ConfigError(f"points must be (B,P,2) with labels (B,P) for B={b}, got "
                              f"{tuple(points.shape)} and {None if point_labels is None else tuple(point_labels.shape)}")
        if boxes is not None and (boxes.ndim != 2 or boxes.shape != (b, 4)):
            raise ConfigError(f"boxes must be (B,4) for B={b}, got {tuple(boxes.shape)}")
        if points is None and boxes is None:
            raise ConfigError("a prompted decode needs points or boxes")
        pts = None if points is None else (points.float(), point_labels)
        bxs = None if boxes is None else boxes.float()
        if use_box is None or points is None or boxes is None:
            sparse, _ = pe(points=pts, boxes=bxs, masks=None)
            return sparse
        by_point, _ = pe(points=pts, boxes=None, masks=None)
        by_box, _ = pe(points=None, boxes=bxs, masks=None)
        if by_point.shape != by_box.shape:
            raise ConfigError("a mixed point/box batch needs one point per image")
        return torch.where(use_box.view(-1, 1, 1).to(torch.bool), by_box, by_point)

    def decode(self, embeddings: torch.Tensor, points: torch.Tensor | None,
               point_labels: torch.Tensor | None, *, boxes: torch.Tensor | None = None,
               use_box: torch.Tensor | None = None, multimask: bool = False, with_iou: bool = False):
        """Embeddings (B,C,h,w) and prompts (see `prompt_embeddings`) -> logits (B,1,S,S).

        Single-mask output (SAM's multimask_output=False: the first mask token). `multimask`:
        SAM's multimask_output=True (mask tokens 1..3), of which the mask with the highest
        predicted IoU is returned, as SamPredictor users do with one click. `with_iou`: return
        (logits, the IoU head's prediction for that mask (B,1)), for MedSAM's loss.
        """
        b = embeddings.shape[0]
        sparse = self.prompt_embeddings(b, points, point_labels, boxes, use_box)
        pe = self.sam.prompt_encoder
        dense = pe.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(
            b, -1, embeddings.shape[-2], embeddings.shape[-1])
        if not multimask:
            if not with_iou:
                return self._upsample(self._decode_masks(embeddings, sparse, dense)[:, :1])
            masks, iou = self._decode_masks(embeddings, sparse, dense, with_iou=True)
            return self._upsample(masks[:, :1]), iou[:, :1]
        masks, iou = self._decode_masks(embeddings, sparse, dense, with_iou=True)
        if masks.shape[1] < 2:
            raise ConfigError("multimask output needs a decoder with several mask tokens")
        best = iou[:, 1:].argmax(1) + 1
        rows = torch.arange(masks.shape[0], device=masks.device)
        low_res = masks[rows, best][:, None]
        if with_iou:
            return self._upsample(low_res), iou[rows, best][:, None]
        return self._upsample(low_res)

    def forward(self, images: torch.Tensor | None, points: torch.Tensor | None,
                point_labels: torch.Tensor | None, boxes: torch.Tensor | None = None,
                use_box: torch.Tensor | None = None, embeddings: torch.Tensor | None = None,
                with_iou: bool = False):
        """Encode `images` (or take precomputed `embeddings`: a frozen encoder) and decode
        (`with_iou`: also the IoU head's prediction, see `decode`)."""
        emb = self.encode(images) if embeddings is None else embeddings
        return self.decode(emb, points, point_labels, boxes=boxes, use_box=use_box, with_iou=with_iou)

    def decode_promptless(self, embeddings: torch.Tensor) -> torch.Tensor:
        """SAMed-style: no prompt, all num_classes + 1 mask tokens -> logits (B, K+1, S, S)."""
        if self.num_classes is None:
            raise ConfigError("promptless output needs a model built with num_classes "
                              "(build_sam(..., num_classes=K), train fit --prompt none)")
        b = embeddings.shape[0]
        prompt_encoder = self.sam.prompt_encoder
        sparse = embeddings.new_zeros((b, 0, prompt_encoder.embed_dim))
        dense = prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(
            b, -1, embeddings.shape[-2], embeddings.shape[-1])
        return self._upsample(self._decode_masks(embeddings, sparse, dense))

    def forward_promptless(self, images: torch.Tensor) -> torch.Tensor:
        return self.decode_promptless(self.encode(images))
