"""The default aligner's ImageNet classifier on ONNX Runtime, for CPUs.

On a CPU, torch runs EfficientNet-Lite0's depthwise convolutions slowly: ONNX Runtime gives
the same logits (within 1e-5) for a fraction of torch's CPU time
(docs/default-aligner.md#words-join-default-2026-12-02-afternoon).
The torch model is exported once with torch's own exporter and cached beside the class
embeddings; training (which needs gradients) and GPUs keep using torch. Anything that
stops the export (no ``onnx`` package, an exporter error, a read-only cache) falls back to
torch with one log line: the vectors are the same either way.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

_INPUT, _OUTPUT = "pixels", "logits"


class OnnxClassifier:
    def __init__(self, session: Any):
        self.session = session

    def logits(self, pixels: np.ndarray) -> np.ndarray:
        return self.session.run([_OUTPUT], {_INPUT: np.ascontiguousarray(pixels, np.float32)})[0]


def load(name: str, size: int, cache: Path, torch_model: Callable[[], object], stamp: str = "") -> OnnxClassifier | None:
    """The classifier `name` as an ONNX Runtime session, exported from `torch_model()` once; None if impossible.

    `stamp` names the weights it was exported from: other weights, another file.
    """
    try:
        import onnxruntime
        import torch
    except ImportError:
        return None
    key = hashlib.sha256(f"{name}|{stamp}|{size}|torch {torch.__version__}".encode()).hexdigest()[:12]
    path = cache / f"classifier-{name}-{key}.onnx"
    try:
        if not path.exists():
            _export(torch_model(), size, path)
        options = onnxruntime.SessionOptions()
        # As many threads as torch uses (runtime.pick_device sets them); one inter-op thread (the graph is a chain).
        options.intra_op_num_threads, options.inter_op_num_threads = torch.get_num_threads(), 1
        session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - any failure here only costs speed
        log.info("classifying with torch: the ONNX copy of %s is unavailable (%s)", name, exc)
        return None
    return OnnxClassifier(session)


def _export(model: Any, size: int, path: Path) -> None:
    import torch

    log.info("exporting the image classifier to ONNX (once; cached in %s)", path)
    example = torch.zeros(2, 3, size, size)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter announces its deprecation
        # torch's annotation names only paths, but its TorchScript exporter writes to file objects too.
        torch.onnx.export(model.float().eval(), (example,), buffer, input_names=[_INPUT], output_names=[_OUTPUT],  # type: ignore[arg-type]
                          dynamic_axes={_INPUT: {0: "n"}, _OUTPUT: {0: "n"}}, opset_version=17, dynamo=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_bytes(buffer.getvalue())
    os.replace(tmp, path)  # atomic: concurrent processes never read half a file
