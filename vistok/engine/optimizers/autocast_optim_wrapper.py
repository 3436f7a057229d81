from contextlib import contextmanager

import torch
from mmengine.optim import OptimWrapper

from vistok.registry import OPTIM_WRAPPERS


@OPTIM_WRAPPERS.register_module()
class AutocastOptimWrapper(OptimWrapper):
    """Mixed precision without a loss scaler: the forward pass runs under
    ``torch.autocast`` (bf16 by default), gradients and the update stay fp32.

    mmengine's ``AmpOptimWrapper`` asserts a GPU; this wrapper is what
    ``--amp`` uses on CPU (bf16 is the autocast dtype CPUs support, and with
    its fp32 exponent range no loss scaling is needed). On CUDA, ``--amp``
    uses ``AmpOptimWrapper`` (fp16 with a dynamic loss scaler).

    Args:
        dtype: ``'bfloat16'`` (default) or ``'float16'``.
        device_type: ``'cpu'`` / ``'cuda'``; ``None`` picks CUDA if available.
    """

    def __init__(self, *args, dtype='bfloat16', device_type=None, **kwargs):
        super().__init__(*args, **kwargs)
        if dtype not in ('bfloat16', 'float16'):
            raise ValueError(f"AutocastOptimWrapper dtype must be 'bfloat16' "
                             f"or 'float16', got {dtype!r}")
        self.cast_dtype = getattr(torch, dtype)
        self.device_type = device_type or (
            'cuda' if torch.cuda.is_available() else 'cpu')

    @contextmanager
    def optim_context(self, model):
        with super().optim_context(model), torch.autocast(
                device_type=self.device_type, dtype=self.cast_dtype):
            yield
