"""The steps of `train fit`, each alone: optimiser and schedule, one training step, the metrics
window, the checkpointer, stopping on a signal, device choice, run preparation helpers."""
from __future__ import annotations

import json
import os
import signal

import pytest
import torch
from torch import nn

from shared.errors import ConfigError, DataError
from train.checkpointing import load_checkpoint
from train.config import AugmentConfig, resolve_config
from train.devices import pick_device
from train.fit_setup import safe_augment, truncate_metrics
from train.fit_steps import (Checkpointer, MetricsWindow, StopRequest, make_optimizer, train_step,
                             weights_digest)


def _cfg(**over):
    return resolve_config(overrides={"model": "tiny", "img_size": 16, **over})


class PixelModel(nn.Module):
    """logits = a 1x1 convolution of the image (point prompts ignored): small, real gradients."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 1)
        with torch.no_grad():
            self.conv.weight.fill_(0.1)
            self.conv.bias.zero_()

    def forward(self, images, points=None, point_labels=None):
        return self.conv(images)


def _batch(b=2, s=16):
    g = torch.Generator().manual_seed(0)
    image = torch.rand(b, 1, s, s, generator=g)
    return {"image": image, "target": (image[:, 0] > 0.5).to(torch.uint8),
            "points": torch.zeros(b, 1, 2), "point_labels": torch.ones(b, 1, dtype=torch.long)}


def test_optimizer_follows_warmup_and_decay_and_resumes():
    cfg = _cfg(lr=1e-2, warmup_steps=4, decay_gamma=0.5, decay_every=2)
    model = PixelModel()
    opt = make_optimizer(model, cfg)
    assert [id(p) for p in opt.params] == [id(p) for p in model.parameters()]
    assert opt.optimizer.defaults["weight_decay"] == cfg.weight_decay
    lrs = []
    for step in range(8):
        lrs.append(opt.lr)
        train_step(model, _batch(), opt, cfg, torch.device("cpu"), step)
    want = [1e-2 * f for f in (0.25, 0.5, 0.75, 1.0, 1.0, 0.5 ** 0.5, 0.5, 0.5 ** 1.5)]
    assert lrs == pytest.approx(want)
    # a resumed optimiser continues the schedule and the moments where they were
    saved = {"optimizer": opt.optimizer.state_dict(), "scheduler": opt.scheduler.state_dict()}
    again = make_optimizer(model, cfg, saved)
    assert again.lr == pytest.approx(1e-2 * 0.5 ** 2) and torch.equal(
        again.optimizer.state_dict()["state"][0]["exp_avg"], opt.optimizer.state_dict()["state"][0]["exp_avg"])
    with pytest.raises(DataError, match="x.pt: optimizer state does not fit this model"):
        make_optimizer(nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 1, bias=False)), cfg, saved, "x.pt")


def test_train_step_updates_weights_and_refuses_nan():
    cfg = _cfg(lr=1e-2, warmup_steps=0)
    model = PixelModel()
    opt = make_optimizer(model, cfg)
    before = model.conv.weight.detach().clone()
    out = train_step(model, _batch(), opt, cfg, torch.device("cpu"), 0)
    assert out.loss == pytest.approx(cfg.ce_weight * out.ce + cfg.dice_weight * out.dice)
    assert out.lr == pytest.approx(1e-2) and out.logits.shape == (2, 1, 16, 16)
    assert not torch.equal(model.conv.weight, before)
    with torch.no_grad():
        model.conv.bias.fill_(float("nan"))
    weights = model.conv.weight.detach().clone()
    with pytest.raises(DataError, match="training diverged at step 6"):
        train_step(model, _batch(), opt, cfg, torch.device("cpu"), 5)
    assert torch.equal(model.conv.weight, weights)          # no step was taken


class PixelModelWithIoU(PixelModel):
    """PixelModel plus an IoU 'head' (one learnable number per batch row), as PromptSAM(with_iou=True)."""

    def __init__(self):
        super().__init__()
        self.iou = nn.Parameter(torch.tensor(0.9))

    def forward(self, images, points=None, point_labels=None, with_iou=False):
        logits = self.conv(images)
        return (logits, self.iou.expand(images.shape[0], 1)) if with_iou else logits


def test_train_step_with_medsams_loss_trains_the_iou_head():
    cfg = _cfg(lr=1e-2, warmup_steps=0, loss="medsam")
    model = PixelModelWithIoU()
    opt = make_optimizer(model, cfg)
    out = train_step(model, _batch(), opt, cfg, torch.device("cpu"), 0)
    # reported: ce = BCE, dice = squared Dice; the loss adds the IoU head's squared error
    assert out.loss > out.ce + out.dice
    assert model.iou.item() != pytest.approx(0.9)
    with pytest.raises(ConfigError, match="loss"):
        _cfg(loss="focal")
    with pytest.raises(ConfigError, match="medsam"):
        _cfg(loss="medsam", prompt="none")


def test_metrics_window_means_rates_and_epochs():
    ticks = iter([0.0, 2.0, 2.0, 6.0, 6.0])                   # seconds on the window's clock
    w = MetricsWindow(log_every=5, start_step=10, total_steps=14, start_sample=80, n_train=40,
                      global_batch=8, clock=lambda: next(ticks))
    r11 = w.add(11, 1.0, 0.6, 0.5, 1e-3)                     # first step of this invocation: logged
    assert r11 == {"step": 11, "loss": 1.0, "ce": 0.6, "dice": 0.5, "lr": 1e-3, "samples_per_s": 4.0,
                   "epoch": 2.2}
    assert w.add(12, 0.5, 0.3, 0.25, 1e-3) is None
    assert w.add(13, 0.5, 0.3, 0.25, 1e-3) is None
    r = w.add(14, 0.2, 0.1, 0.1, 5e-4)                         # the last step closes the window
    assert r == {"step": 14, "loss": 0.4, "ce": pytest.approx(0.233333), "dice": 0.2, "lr": 5e-4,
                 "samples_per_s": 6.0, "epoch": 2.8}
    assert w.first_loss == 1.0 and w.last_loss == pytest.approx(0.4)
    assert w.samples_seen(12) == 96 and w.due(15) and not w.due(16)


def test_checkpointer_saves_periodic_kept_and_on_demand(tmp_path):
    cfg = _cfg(checkpoint_every=3, save_every_steps=2, save_every_minutes=0.0)
    model = PixelModel()
    opt = make_optimizer(model, cfg)
    ck = Checkpointer(tmp_path, cfg, {"name": "ds"}, model, opt, world=1,
                      samples_seen=lambda step: 8 * step, start_step=0)
    saved = []
    for step in range(1, 7):
        ck.after_step(step, 6)
        if ck.last.exists():
            saved.append(load_checkpoint(ck.last)["step"])
    assert saved == [2, 3, 4, 4, 4]      # nothing after step 1, then every 2nd step and the kept step 3
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["last.pt", "step-000003.pt"]
    assert ck.saved_step == 4                                  # step 6 is the end: the caller saves it
    ck.save(6)
    last = load_checkpoint(ck.last)
    assert last["step"] == 6 and last["samples_seen"] == 48 and last["dataset"] == {"name": "ds"}
    assert torch.equal(last["trainable"]["conv.weight"], model.conv.weight.detach())
    minutes = Checkpointer(tmp_path, _cfg(save_every_steps=0, save_every_minutes=1.0), {}, model, opt,
                           world=1, samples_seen=lambda s: s, start_step=0, clock=iter([0.0, 30.0, 61.0]).__next__)
    assert not minutes.periodic_due(1) and minutes.periodic_due(2)


def test_stop_request_remembers_the_signal_then_stops_at_once():
    before = signal.getsignal(signal.SIGTERM)
    with StopRequest() as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.signal_name == "SIGTERM"
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGTERM) is before
    with StopRequest(enabled=False) as off:                    # DDP: signals keep their handlers
        assert signal.getsignal(signal.SIGTERM) is before and off.signal_name is None


def test_pick_device_rules(monkeypatch):
    assert pick_device("cpu") == torch.device("cpu")
    with pytest.raises(ConfigError, match="--device 'gpu' must be auto, cpu or cuda"):
        pick_device("gpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert pick_device("auto", 1) == torch.device("cpu")
    with pytest.raises(ConfigError, match="--device cuda:1: CUDA is not available"):
        pick_device("cuda:1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert pick_device("auto", 1) == torch.device("cuda", 1)   # this process's GPU under torchrun
    assert pick_device("cuda") == torch.device("cuda", 0) and pick_device("cuda:3", 1) == torch.device("cuda", 3)


def test_safe_augment_and_truncated_metrics(tmp_path):
    cfg = _cfg(prompt="none", augment={"flip_prob": 0.5, "rot90_prob": 0.5, "rotate_deg": 10.0})
    aug = safe_augment(cfg, ["background", "left_kidney", "right_kidney"])
    assert aug == AugmentConfig(rotate_deg=10.0)                # no flips for sided organs
    assert safe_augment(cfg, ["background", "tumour"]) == cfg.augment
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text("".join(json.dumps({"step": s, "loss": s / 10}) + "\n" for s in (1, 10, 20, 30)) + "junk\n")
    truncate_metrics(metrics, 20)
    assert [json.loads(line)["step"] for line in metrics.read_text().splitlines()] == [1, 10, 20]
    state = {"b": torch.ones(2), "a": torch.zeros(3)}
    assert weights_digest(state) == weights_digest(dict(reversed(list(state.items()))))
    assert weights_digest(state) != weights_digest({**state, "a": torch.ones(3)})
