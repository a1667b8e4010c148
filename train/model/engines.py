"""CPU engines for an image encoder: eager torch, ONNX Runtime or OpenVINO (issue 28, item 6).

``make_encoder_engine(encoder, engine, img_size=, num_threads=)`` returns a callable that maps a
CPU float32 ``(B, 3, S, S)`` tensor to the encoder's CPU float32 ``(B, C, h, w)`` output, so it
can stand in for ``encoder(x)`` wherever an embedding is computed (once per slice, for all of
its prompts). The prompt encoder and mask decoder stay in torch: they are small.

- ``"torch"``: the module itself under ``torch.inference_mode`` with ``num_threads`` torch
  threads while it runs.
- ``"onnxruntime"`` / ``"openvino"``: the encoder is exported to ONNX once (TorchScript exporter,
  opset 17, dynamic batch axis) and cached on disk, content-addressed by a sha256 over the
  encoder's state-dict tensors (names, shapes, dtypes, bytes), its module structure (``repr``),
  ``img_size`` and the torch / onnx versions, so a LoRA-adapted encoder gets its own file. The
  file is written atomically (``shared.fileio``): a killed export leaves no file that looks
  complete. Cache folder: ``cache_dir``, else ``$EXEMPLAR_SAM_ENGINE_CACHE``, else
  ``$XDG_CACHE_HOME/exemplar-sam/engines``, else ``~/.cache/exemplar-sam/engines``
  (``EXEMPLAR_SAM_CACHE`` is the size-bounded cache of remote shards, shared/shards/remote.py).

The encoder is put in eval mode (``encoder.eval()``) before anything runs: TinyViT's attention
caches its bias table (``ab``) when it enters eval mode, and the export must see that table.
``default_engine()`` names the engine to use when none is given (OpenVINO if installed, else
ONNX Runtime). Inference precision is fp32 everywhere (OpenVINO would otherwise pick bf16 on CPUs with AMX);
the engines agree with eager torch to ~3e-6 on the LiteMedSAM embedding (BENCHMARKS.md,
"LiteMedSAM CPU engines (issue 28)").
"""
from __future__ import annotations

import builtins
import hashlib
import io
import os
import sys
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Protocol, runtime_checkable

import numpy as np
import torch
from torch import nn

from shared.errors import ConfigError, exception_summary
from shared.fileio import atomic_write_bytes

ENGINES = ("torch", "onnxruntime", "openvino")
EXPORT_FORMAT = 1  # bump when the export itself changes (opset, names, shims): new cache keys
OPSET = 17
INPUT_NAME = "image"
OUTPUT_NAME = "embedding"

_PIP = {"onnxruntime": "pip install onnxruntime", "openvino": "pip install openvino",
        "onnx": "pip install onnx"}


@runtime_checkable
class EncoderEngine(Protocol):
    """What :func:`make_encoder_engine` returns: ``engine(x)`` in place of ``encoder(x)``."""

    name: str

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """CPU float32 ``(B, 3, S, S)`` -> CPU float32 ``(B, C, h, w)``."""
        ...


def default_engine() -> str:
    """The engine to use when none is named: OpenVINO when installed (the fastest fp32 engine per
    CPU-second and the smallest in memory here, BENCHMARKS.md), else ONNX Runtime (a base
    dependency; ~1.6x eager torch)."""
    try:
        import openvino  # noqa: F401
    except ImportError:
        return "onnxruntime"
    return "openvino"


def default_cache_dir() -> Path:
    """``$EXEMPLAR_SAM_ENGINE_CACHE``, else ``$XDG_CACHE_HOME/exemplar-sam/engines``, else
    ``~/.cache/exemplar-sam/engines``."""
    if os.environ.get("EXEMPLAR_SAM_ENGINE_CACHE"):
        return Path(os.environ["EXEMPLAR_SAM_ENGINE_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "exemplar-sam" / "engines"


def encoder_digest(encoder: nn.Module, img_size: int) -> str:
    """sha256 (hex) naming the ONNX export of ``encoder`` at ``img_size``: the state-dict tensors
    (names, shapes, dtypes, bytes), the module structure, the size and the torch/onnx versions."""
    import onnx

    h = hashlib.sha256()
    h.update(f"exemplar-sam encoder export {EXPORT_FORMAT} opset {OPSET}\n".encode())
    h.update(f"torch {torch.__version__} onnx {onnx.__version__} img_size {int(img_size)}\n".encode())
    hash_module(h, encoder)
    return h.hexdigest()


def hash_module(h: "hashlib._Hash", module: nn.Module) -> None:
    """Feed `module`'s class, structure (repr) and state-dict tensors (names, shapes, dtypes,
    bytes) into the hash `h`: what its outputs depend on."""
    h.update(f"{type(module).__module__}.{type(module).__qualname__}\n{module!r}\n".encode())
    for name, tensor in module.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name} {tuple(t.shape)} {t.dtype}\n".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")


def onnx_path_for(encoder: nn.Module, img_size: int, cache_dir: Path | None = None, *,
                  engine: str = "onnxruntime") -> Path:
    """Where the ONNX export of ``encoder`` lives in the cache (it may not exist yet)."""
    _require("onnx", engine)  # its version is part of the name
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return folder / f"encoder-{img_size}-{encoder_digest(encoder, img_size)[:32]}.onnx"


def _require(module: str, engine: str) -> Any:
    try:
        return __import__(module)
    except ImportError:
        raise ConfigError(f"encoder engine {engine!r} needs the Python package {module!r}, which "
                          f"is not installed: {_PIP.get(module, 'pip install ' + module)}") from None


def _tensor_len(obj: Any) -> Any:
    return obj.shape[0] if isinstance(obj, torch.Tensor) else builtins.len(obj)


@contextmanager
def _traceable_len(encoder: nn.Module) -> Iterator[None]:
    """While exporting, ``len(tensor)`` in the encoder's source modules reads ``tensor.shape[0]``.

    TinyViT's PatchMerging takes the batch size with ``len(x)``, which the tracer records as a
    constant (a batch of 2 then fails in the exported graph); ``x.shape[0]`` is traced as the
    input's size, so the batch axis stays dynamic. The name is set in those modules' globals
    only for the export and removed afterwards."""
    modules = {sys.modules.get(type(m).__module__) for m in encoder.modules()}
    patched = [m for m in modules if m is not None and "len" not in vars(m)]
    for m in patched:
        m.len = _tensor_len  # type: ignore[attr-defined]
    try:
        yield
    finally:
        for m in patched:
            vars(m).pop("len", None)


def export_onnx(encoder: nn.Module, img_size: int, path: Path, *, engine: str = "onnxruntime") -> None:
    """Export ``encoder`` (eval mode) to ``path`` atomically; a failure is a one-line ConfigError."""
    _require("onnx", engine)
    encoder.eval()
    example = torch.zeros(1, 3, img_size, img_size, dtype=torch.float32)
    buffer = io.BytesIO()
    try:
        with _traceable_len(encoder), warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # tracer and deprecation warnings of the exporter
            torch.onnx.export(encoder, (example,), buffer, input_names=[INPUT_NAME],
                              output_names=[OUTPUT_NAME], opset_version=OPSET, dynamo=False,
                              dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                              do_constant_folding=True)
    except Exception as exc:  # noqa: BLE001 - any exporter failure becomes one line
        raise ConfigError(f"{path}: ONNX export of the {type(encoder).__name__} encoder failed "
                          f"({exception_summary(exc)})") from None
    atomic_write_bytes(path, buffer.getvalue())


def cached_onnx(encoder: nn.Module, img_size: int, cache_dir: Path | None = None, *,
                engine: str = "onnxruntime") -> Path:
    """The cached ONNX file of ``encoder``, exported first when it is not there yet."""
    path = onnx_path_for(encoder, img_size, cache_dir, engine=engine)
    if not path.is_file():
        export_onnx(encoder, img_size, path, engine=engine)
    return path


def _check_input(x: torch.Tensor) -> np.ndarray:
    if x.dtype != torch.float32 or x.device.type != "cpu" or x.ndim != 4:
        raise ValueError(f"encoder engines take a CPU float32 (B, 3, S, S) tensor, got "
                         f"{x.dtype} {tuple(x.shape)} on {x.device}")
    return x.detach().contiguous().numpy()


class TorchEngine:
    """Eager torch: ``encoder(x)`` under inference_mode with ``num_threads`` torch threads."""

    name = "torch"

    def __init__(self, encoder: nn.Module, num_threads: int):
        self.encoder = encoder.eval()
        self.num_threads = num_threads

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        old = torch.get_num_threads()
        if old != self.num_threads:
            torch.set_num_threads(self.num_threads)
        try:
            with torch.inference_mode():
                out = self.encoder(x)
            return out.clone() if out.is_inference() else out  # usable outside inference_mode
        finally:
            if old != self.num_threads:
                torch.set_num_threads(old)


class OnnxRuntimeEngine:
    """ONNX Runtime CPU session: intra-op threads = num_threads, inter-op 1, sequential, all
    graph optimisations. ``spinning`` (session.intra_op.allow_spinning) is off by default: on a
    shared 2-core machine spinning workers made 2 threads 1.6x slower (BENCHMARKS.md), the same
    reason `train` sets OMP_WAIT_POLICY=PASSIVE."""

    name = "onnxruntime"

    def __init__(self, onnx_path: Path, num_threads: int, *, spinning: bool = False):
        ort = _require("onnxruntime", "onnxruntime")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = num_threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
        opts.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001
            raise ConfigError(f"{onnx_path}: ONNX Runtime cannot load the encoder "
                              f"({exception_summary(exc)}); delete the file to export it again") from None
        self.onnx_path = Path(onnx_path)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        out = self.session.run([OUTPUT_NAME], {INPUT_NAME: _check_input(x)})[0]
        return torch.from_numpy(out)


class OpenVinoEngine:
    """OpenVINO on CPU, fp32 inference precision, INFERENCE_NUM_THREADS = num_threads.

    ``hint``: PERFORMANCE_HINT ("LATENCY" default: one stream, all threads on one request;
    "THROUGHPUT": one single-threaded stream per thread, the slices of a batch run side by side
    through an AsyncInferQueue, so each core works on its own slice; None leaves the plugin
    default). ``static``: compile for batch 1 (faster than the dynamic shape, BENCHMARKS.md) and
    run a batch one item at a time."""

    name = "openvino"

    def __init__(self, onnx_path: Path, num_threads: int, img_size: int, *,
                 hint: str | None = "LATENCY", static: bool = True, precision: str = "f32"):
        ov = _require("openvino", "openvino")
        try:
            core = ov.Core()
            model = core.read_model(str(onnx_path))
            if static:
                model.reshape([1, 3, img_size, img_size])
            config: dict[str, Any] = {"INFERENCE_NUM_THREADS": num_threads,
                                      "INFERENCE_PRECISION_HINT": precision}
            if hint is not None:
                config["PERFORMANCE_HINT"] = hint
            if hint == "THROUGHPUT":
                config["NUM_STREAMS"] = num_threads
            self.compiled = core.compile_model(model, "CPU", config)
        except Exception as exc:  # noqa: BLE001
            raise ConfigError(f"{onnx_path}: OpenVINO cannot compile the encoder "
                              f"({exception_summary(exc)}); delete the file to export it again") from None
        self.request = self.compiled.create_infer_request()
        self.static = static
        self.onnx_path = Path(onnx_path)
        self.queue = None
        if hint == "THROUGHPUT" and static and num_threads > 1:
            self.queue = ov.AsyncInferQueue(self.compiled, num_threads)

    def _run(self, batch: np.ndarray) -> np.ndarray:
        return np.array(self.request.infer({0: batch})[0], dtype=np.float32, copy=True)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        arr = _check_input(x)
        if self.queue is not None and len(arr) > 1:
            return torch.from_numpy(self._run_side_by_side(arr))
        if self.static:
            return torch.from_numpy(np.concatenate([self._run(arr[i:i + 1]) for i in range(len(arr))]))
        return torch.from_numpy(self._run(arr))

    def _run_side_by_side(self, arr: np.ndarray) -> np.ndarray:
        outs: list[np.ndarray | None] = [None] * len(arr)

        def done(request, i: int) -> None:
            outs[i] = np.array(request.get_output_tensor(0).data, dtype=np.float32, copy=True)

        self.queue.set_callback(done)
        for i in range(len(arr)):
            self.queue.start_async({0: np.ascontiguousarray(arr[i:i + 1])}, i)
        self.queue.wait_all()
        return np.concatenate(outs)


def make_encoder_engine(encoder: nn.Module, engine: str, *, img_size: int, num_threads: int,
                        cache_dir: Path | None = None, **options: Any) -> EncoderEngine:
    """An engine that computes ``encoder(x)`` on the CPU; see the module docstring.

    engine: one of :data:`ENGINES`; img_size: the square input size S the encoder takes;
    num_threads: threads of one call (>= 1); cache_dir: where ONNX exports are kept (default
    :func:`default_cache_dir`). ``options`` go to the engine class (``spinning`` for ONNX
    Runtime; ``hint``, ``static``, ``precision`` for OpenVINO), for benchmarks.
    A package that is not installed or a failed export is a one-line ConfigError."""
    if engine not in ENGINES:
        raise ConfigError(f"unknown encoder engine {engine!r}; choose one of {', '.join(ENGINES)}")
    if num_threads < 1:
        raise ConfigError(f"encoder engine threads must be >= 1, got {num_threads}")
    encoder.eval()
    if engine == "torch":
        if options:
            raise TypeError(f"the torch engine takes no options, got {sorted(options)}")
        return TorchEngine(encoder, num_threads)
    _require("onnxruntime" if engine == "onnxruntime" else "openvino", engine)
    path = cached_onnx(encoder, img_size, cache_dir, engine=engine)
    if engine == "onnxruntime":
        return OnnxRuntimeEngine(path, num_threads, **options)
    return OpenVinoEngine(path, num_threads, img_size, **options)
