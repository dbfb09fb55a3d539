"""Mixed precision on the meta device: CUDA autocast's casting rules, replayed above autograd.

PyTorch's autocast acts on CUDA and CPU tensors only, so a step traced on the meta device
runs in float32 even inside ``torch.autocast``. :class:`MetaAutocast` is a
``TorchFunctionMode``: it sees each torch function call before autograd does and casts its
floating-point tensor arguments as CUDA's autocast would, so autograd saves the cast tensors
exactly as on a GPU. The rules are svlab's reading of PyTorch's autocast op reference
("CUDA Ops that can autocast to float16 / to float32"), for the ops svlab's models and heads
call; every other op runs in the type of its inputs, as autocast leaves it. As autocast does,
a weight (a leaf tensor that requires grad) is cast once per region and the copy kept until
the region ends. The tests compare it with real CPU autocast on real tensors.
"""

from __future__ import annotations

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_map

LOWER_PRECISION = frozenset({  # autocast runs these in float16 / bfloat16
    "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d", "linear", "matmul",
    "__matmul__", "mm", "bmm", "addmm", "baddbmm", "addbmm", "mv", "prelu",
})
FLOAT32 = frozenset({  # and these in float32
    "softmax", "log_softmax", "cross_entropy", "nll_loss", "mse_loss", "l1_loss", "norm",
    "sum", "prod", "cumsum", "cumprod", "exp", "log", "log1p", "pow", "__pow__", "rsqrt",
    "reciprocal", "layer_norm", "group_norm", "cosine_similarity", "logsumexp", "softplus",
    "binary_cross_entropy_with_logits", "kl_div", "cdist", "dist",
})


class MetaAutocast(TorchFunctionMode):
    """Inside it, torch calls cast their floating-point inputs as CUDA autocast does.

    >>> w = torch.empty(8, 4, device="meta"); x = torch.empty(2, 4, device="meta")
    >>> with MetaAutocast(torch.bfloat16):
    ...     y = torch.nn.functional.linear(x, w)
    ...     z = y.softmax(dim=1)
    >>> y.dtype, z.dtype
    (torch.bfloat16, torch.float32)
    """

    def __init__(self, dtype: torch.dtype = torch.float16) -> None:
        super().__init__()
        if dtype not in (torch.float16, torch.bfloat16):
            raise ValueError(f"autocast runs in float16 or bfloat16, not {dtype}")
        self.dtype = dtype
        self.weight_casts: dict[int, torch.Tensor] = {}

    def __exit__(self, *exc):
        self.weight_casts.clear()
        return super().__exit__(*exc)

    def _cast(self, value, dtype: torch.dtype):
        if not (isinstance(value, torch.Tensor) and value.is_floating_point()
                and value.dtype != dtype):
            return value
        if not (value.is_leaf and value.requires_grad and dtype == self.dtype):
            return value.to(dtype)
        if id(value) not in self.weight_casts:
            self.weight_casts[id(value)] = value.to(dtype)
        return self.weight_casts[id(value)]

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if name in LOWER_PRECISION:
            args, kwargs = tree_map(lambda v: self._cast(v, self.dtype), (args, kwargs))
        elif name in FLOAT32:
            args, kwargs = tree_map(lambda v: self._cast(v, torch.float32), (args, kwargs))
        return func(*args, **kwargs)
