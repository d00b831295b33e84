"""Int8 inference on the CPU: PyTorch dynamic quantisation of the encoders' nn.Linear layers.

Weights are quantised once to int8, per output channel; activations are quantised on the fly, per tensor
and per call, from their own min/max, and every matmul runs in int8 with an int32 accumulator (fbgemm).
What stays fp32: attention's softmax(QK^T)V (SDPA), LayerNorm, GELU, the embeddings, the patch embedding
convolution, the VTC projections (`vision_proj`, `text_proj`) and every head (VTM, QA, MLM, PEM). The
measurements behind the choice of backend and scheme are in docs/int8.md.

    from model.quantize import quantize_encoders
    int8 = quantize_encoders(load_pretrained(path))  # an AlproModel: encode_video, video_tokens, vtm_logits, ...

Compute `checkpoint_fingerprint` on the fp32 model, before quantising: the quantised model's state dict holds
packed int8 weights, and it cannot be saved with `save_pretrained` either.
"""

from __future__ import annotations

import copy
import logging
import warnings

import torch
from torch import nn

from .alpro import AlproModel

logger = logging.getLogger(__name__)

# The parts that hold nearly all of encode_video's and encode_text's FLOPs; the text encoder's fusion layers
# come along, so VTM re-ranking and QA run in int8 too.
QUANTIZED_PARTS = ("visual_encoder", "text_encoder")
# The engines whose dynamic int8 Linear runs well here (fbgemm behind "x86" on x86 CPUs, qnnpack on ARM).
ENGINES = ("x86", "fbgemm", "qnnpack")


class QuantizationError(RuntimeError):
    """The model cannot be quantised as asked (not on the CPU, already quantised, no int8 engine)."""


with warnings.catch_warnings():  # torch.ao.quantization warns on import that torchao will replace it
    warnings.simplefilter("ignore", DeprecationWarning)
    from torch.ao.nn.quantized.dynamic import Linear as _DynamicLinear
    from torch.ao.quantization import PerChannelMinMaxObserver, PlaceholderObserver, QConfig, quantize_dynamic


class Int8Linear(_DynamicLinear):
    """torch's dynamic int8 Linear with 8-bit activations instead of its 7-bit default (`reduce_range=True`).

    fbgemm on CPUs without VNNI multiplies uint8 activations by int8 weights in pairs summed into int16
    (vpmaddubsw), which saturates past 32767; torch avoids that by dropping a bit of the activations. Here the
    weights give up that bit instead (7-bit, per output channel: 2 * 255 * 64 < 32768): on a trained BERT
    the activations carry the outlier channels, so their 8th bit is worth more (docs/int8.md).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.quantized.linear_dynamic(x, self._packed_params._packed_params, reduce_range=False)


INT8_QCONFIG = QConfig(
    activation=PlaceholderObserver.with_args(dtype=torch.quint8, quant_min=0, quant_max=255, is_dynamic=True),
    weight=PerChannelMinMaxObserver.with_args(dtype=torch.qint8, qscheme=torch.per_channel_symmetric,
                                              quant_min=-64, quant_max=63),
)


def is_quantized(model: nn.Module) -> bool:
    """True if any layer of `model` is a dynamically quantised Linear."""
    return any(isinstance(m, _DynamicLinear) for m in model.modules())


def _check_engine() -> str:
    engine = torch.backends.quantized.engine
    if engine in ENGINES:
        return engine
    for candidate in ENGINES:
        if candidate in torch.backends.quantized.supported_engines:
            torch.backends.quantized.engine = candidate
            logger.info("quantized engine set to %s (was %s)", candidate, engine)
            return candidate
    raise QuantizationError(f"this torch build has no int8 CPU engine among {ENGINES} "
                            f"(supported: {torch.backends.quantized.supported_engines})")


def quantize_encoders(model: AlproModel, *, inplace: bool = False) -> AlproModel:
    """An AlproModel whose video and text encoders run their Linear layers in int8 on the CPU (eval mode).

    Keeps every method of AlproModel (`encode_video`, `video_tokens`, `encode_text`, `text_tokens`,
    `text_features`, `vtm_logits_from_tokens`, `answer_logits_from_tokens`, ...). A copy unless `inplace`;
    the copy briefly doubles the fp32 weights' memory. Inference only: the int8 layers have no gradients.
    """
    if not isinstance(model, AlproModel):
        raise QuantizationError(f"quantize_encoders takes an AlproModel, got {type(model).__name__}")
    if model.device.type != "cpu":
        raise QuantizationError(f"int8 dynamic quantisation runs on the CPU only; the model is on {model.device}: "
                                "on a GPU use fp16/bf16 autocast instead")
    if is_quantized(model):
        raise QuantizationError("the model is already quantised")
    engine = _check_engine()
    target = model if inplace else copy.deepcopy(model)
    target.eval()
    spec = {name: INT8_QCONFIG for name in QUANTIZED_PARTS}
    with warnings.catch_warnings():  # quantised tensor constructors warn that they are deprecated in torch 2.14
        warnings.filterwarnings("ignore", message=r".*quantize_per_(tensor|channel).*deprecated")
        warnings.simplefilter("ignore", DeprecationWarning)
        quantize_dynamic(target, spec, dtype=torch.qint8, mapping={nn.Linear: Int8Linear}, inplace=True)
    count = sum(isinstance(m, Int8Linear) for m in target.modules())
    logger.info("quantised %d Linear layers of %s to int8 (engine %s)", count, ", ".join(QUANTIZED_PARTS), engine)
    return target


__all__ = ["INT8_QCONFIG", "Int8Linear", "QUANTIZED_PARTS", "QuantizationError", "is_quantized", "quantize_encoders"]
