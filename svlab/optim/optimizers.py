"""SGD with momentum and Adam with 8-bit states: dequantize, update in fp32, requantize."""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable
from typing import Any

import torch

from svlab.optim.blockwise import (
    check_blocksize,
    dequantize_blockwise,
    holds,
    quantize_blockwise,
)
from svlab.optim.maps import dynamic_map

MIN_8BIT_SIZE = 4096  # bitsandbytes' default: smaller tensors keep fp32 state


class OptimizerStateError(ValueError):
    """An optimizer state (or a state dict being loaded) that does not fit its parameters."""


class NonFiniteGradientError(ValueError):
    """A NaN or Inf gradient met by an optimizer created with ``on_nonfinite="raise"``."""


class Optimizer8bit(torch.optim.Optimizer):
    """What SGD8bit and Adam8bit share: 8-bit state storage, guards, skipping and loading.

    Every state tensor named in ``_state_names`` with a map in ``_signed`` is kept, for a
    parameter of at least ``min_8bit_size`` elements, as uint8 codes (``name``) plus one
    float32 absmax per block (``name + "_absmax"``); smaller parameters keep a float32
    tensor under ``name``. A step dequantizes a state to fp32, updates it exactly as the
    fp32 optimizer would, and quantizes it back, so only the rounding of the stored state
    differs from the fp32 optimizer.

    Gradients with NaN or Inf: with ``on_nonfinite="skip"`` (default) that parameter's
    step is skipped - parameter, states and step count untouched - a ``RuntimeWarning`` is
    issued and ``skipped_steps`` counts it; with ``"raise"`` a
    :class:`NonFiniteGradientError` is raised before anything is changed.
    """

    _state_names: tuple[str, ...] = ()
    _signed: dict[str, bool] = {}

    def __init__(
        self,
        params: Iterable,
        defaults: dict[str, Any],
        blocksize: int,
        min_8bit_size: int,
        on_nonfinite: str,
    ) -> None:
        check_blocksize(blocksize)
        if on_nonfinite not in ("skip", "raise"):
            raise ValueError(f"on_nonfinite must be 'skip' or 'raise', got {on_nonfinite!r}")
        if defaults["lr"] < 0:
            raise ValueError(f"learning rate must be >= 0, got {defaults['lr']}")
        defaults = dict(defaults, blocksize=blocksize, min_8bit_size=min_8bit_size)
        super().__init__(params, defaults)
        self.on_nonfinite = on_nonfinite
        self.skipped_steps = 0
        self._maps: dict[tuple[bool, torch.device], torch.Tensor] = {}
        for group in self.param_groups:
            for index, p in enumerate(group["params"]):
                if not p.is_floating_point():
                    raise ValueError(
                        f"{type(self).__name__} optimizes floating-point parameters only; "
                        f"parameter {index} is {p.dtype}"
                    )
                if p.numel() == 0:
                    raise ValueError(
                        f"{type(self).__name__} got an empty parameter {index} "
                        f"of shape {tuple(p.shape)}"
                    )

    def _map(self, signed: bool, device: torch.device) -> torch.Tensor:
        key = (signed, device)
        if key not in self._maps:
            self._maps[key] = dynamic_map(signed).to(device)
        return self._maps[key]

    def _is_8bit(self, p: torch.Tensor, group: dict) -> bool:
        return p.numel() >= group["min_8bit_size"]

    def _init_state(self, p: torch.Tensor, group: dict) -> dict:
        state = self.state[p]
        state["step"] = 0
        n_blocks = -(-p.numel() // group["blocksize"])
        for name in self._state_names:
            if self._is_8bit(p, group):
                zero_code = int(torch.searchsorted(dynamic_map(self._signed[name]), 0.0))
                state[name] = torch.full_like(p, zero_code, dtype=torch.uint8)
                state[name + "_absmax"] = torch.zeros(n_blocks, device=p.device)
            else:
                state[name] = torch.zeros_like(p, dtype=torch.float32)
        return state

    def _read(self, state: dict, name: str, p: torch.Tensor, group: dict) -> torch.Tensor:
        """The state ``name`` of ``p`` as a float32 tensor (dequantized if stored in 8 bits)."""
        if state[name].dtype != torch.uint8:
            return state[name]
        code = self._map(self._signed[name], p.device)
        absmax = state[name + "_absmax"]
        return dequantize_blockwise(state[name], absmax, code, group["blocksize"], p.shape)

    def _write(self, state: dict, name: str, value: torch.Tensor, group: dict) -> None:
        """Store the float32 ``value`` as state ``name``, requantizing when it is 8-bit."""
        if state[name].dtype != torch.uint8:
            state[name].copy_(value)
            return
        code = self._map(self._signed[name], value.device)
        q, absmax = quantize_blockwise(value, code, group["blocksize"])
        state[name].copy_(q)
        state[name + "_absmax"].copy_(absmax)

    def _grad_ok(self, p: torch.Tensor, index: int) -> bool:
        if holds(torch.isfinite(p.grad)):
            return True
        message = f"{type(self).__name__}: parameter {index} has a NaN or Inf gradient"
        if self.on_nonfinite == "raise":
            raise NonFiniteGradientError(message)
        warnings.warn(message + "; its step is skipped", RuntimeWarning, stacklevel=3)
        self.skipped_steps += 1
        return False

    def _update(self, p: torch.Tensor, grad: torch.Tensor, states: dict, group: dict, step: int):
        """Update ``p`` and the fp32 ``states`` in place (each subclass's rule)."""
        raise NotImplementedError

    @torch.no_grad()
    def step(self, closure=None):
        """One step for every parameter with a gradient (``closure`` re-evaluates the loss)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        index = 0
        for group in self.param_groups:
            for p in group["params"]:
                index += 1
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise ValueError(f"{type(self).__name__} does not take sparse gradients")
                if not self._grad_ok(p, index - 1):
                    continue
                state = self.state[p] if self.state[p] else self._init_state(p, group)
                state["step"] += 1
                states = {name: self._read(state, name, p, group) for name in self._state_names}
                new_p = p.float()
                self._update(new_p, p.grad.float(), states, group, state["step"])
                p.copy_(new_p)
                for name, value in states.items():
                    self._write(state, name, value, group)
        return loss

    def load_state_dict(self, state_dict: dict) -> None:
        """Load a state saved by :meth:`state_dict`, checking every tensor fits its parameter.

        A state for a parameter of another size, or with the wrong number of absmax
        values, raises :class:`OptimizerStateError` naming the parameter, and loads nothing.
        """
        params = [p for group in self.param_groups for p in group["params"]]
        saved_groups = state_dict.get("param_groups", [])
        saved_sizes = [len(g["params"]) for g in saved_groups]
        sizes = [len(g["params"]) for g in self.param_groups]
        if saved_sizes != sizes:
            raise OptimizerStateError(
                f"state dict has parameter groups of sizes {saved_sizes}, this optimizer {sizes}"
            )
        saved_ids = [pid for g in saved_groups for pid in g["params"]]
        position = {pid: i for i, pid in enumerate(saved_ids)}
        blocksizes = {pid: g.get("blocksize") for g in saved_groups for pid in g["params"]}
        saved_tensors = {}
        for pid, saved in state_dict.get("state", {}).items():
            p = params[position[pid]]
            for name in self._state_names:
                value = saved.get(name)
                if value is None or value.numel() != p.numel():
                    raise OptimizerStateError(
                        f"state {name!r} of parameter {position[pid]} has "
                        f"{None if value is None else tuple(value.shape)}, the parameter "
                        f"has shape {tuple(p.shape)}"
                    )
                if value.dtype == torch.uint8:
                    n_blocks = -(-p.numel() // blocksizes[pid])
                    absmax = saved.get(name + "_absmax")
                    if absmax is None or absmax.numel() != n_blocks:
                        raise OptimizerStateError(
                            f"state {name!r} of parameter {position[pid]} needs {n_blocks} "
                            f"absmax values, the state dict has "
                            f"{None if absmax is None else absmax.numel()}"
                        )
            saved_tensors[position[pid]] = {k: v for k, v in saved.items() if torch.is_tensor(v)}
        super().load_state_dict(state_dict)
        # torch casts every floating state to the parameter's dtype (uint8 codes too): undo it.
        for i, tensors in saved_tensors.items():
            p = params[i]
            for key, value in tensors.items():
                self.state[p][key] = value.detach().to(p.device).clone()


class SGD8bit(Optimizer8bit):
    """SGD with (optionally Nesterov) momentum whose momentum buffer is stored in 8 bits.

    The update is torch's ``SGD`` with ``dampening=0``: with ``g = grad + weight_decay * p``
    (coupled, L2-style decay), the buffer is ``b = g`` on the first step and
    ``b = momentum * b + g`` after; the step is ``p -= lr * b``, or with Nesterov
    ``p -= lr * (g + momentum * b)``. ``b`` is signed, so it is stored with the signed
    dynamic map in blocks of ``blocksize`` values (bitsandbytes' ``SGD8bit`` uses 256 and
    has no Nesterov variant). Parameters smaller than ``min_8bit_size`` keep an fp32
    buffer. NaN/Inf gradients: see :class:`Optimizer8bit`.

    >>> w = torch.nn.Parameter(torch.ones(5000))
    >>> opt = SGD8bit([w], lr=0.1, momentum=0.9)
    >>> w.grad = torch.full_like(w, 0.5); opt.step(); opt.step()
    >>> round(w[0].item(), 4), opt.state[w]["momentum_buffer"].dtype
    (0.855, torch.uint8)
    """

    _state_names = ("momentum_buffer",)
    _signed = {"momentum_buffer": True}

    def __init__(
        self,
        params: Iterable,
        lr: float,
        momentum: float = 0.9,
        nesterov: bool = False,
        weight_decay: float = 0.0,
        *,
        blocksize: int = 256,
        min_8bit_size: int = MIN_8BIT_SIZE,
        on_nonfinite: str = "skip",
    ) -> None:
        if not 0.0 < momentum < 1.0:
            raise ValueError(f"SGD8bit needs momentum in (0, 1), got {momentum}")
        defaults = dict(lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay)
        super().__init__(params, defaults, blocksize, min_8bit_size, on_nonfinite)

    def _update(self, p, grad, states, group, step):
        if group["weight_decay"]:
            grad = grad.add(p, alpha=group["weight_decay"])
        buffer = states["momentum_buffer"]
        if step == 1:
            buffer.copy_(grad)
        else:
            buffer.mul_(group["momentum"]).add_(grad)
        direction = grad.add(buffer, alpha=group["momentum"]) if group["nesterov"] else buffer
        p.add_(direction, alpha=-group["lr"])


class Adam8bit(Optimizer8bit):
    """Adam with decoupled weight decay whose two moments are stored in 8 bits.

    With ``g`` the gradient: ``m = b1 m + (1 - b1) g`` (signed, so the signed dynamic map),
    ``v = b2 v + (1 - b2) g**2`` (never negative, so the unsigned map, whose extra bit
    goes to precision), then ``p *= 1 - lr * weight_decay`` and
    ``p -= lr * m_hat / (sqrt(v_hat) + eps)`` with the bias corrections
    ``m_hat = m / (1 - b1**t)``, ``v_hat = v / (1 - b2**t)``. Weight decay is decoupled
    (AdamW) because bitsandbytes' ``Adam8bit`` decays that way. Parameters smaller than
    ``min_8bit_size`` keep fp32 moments. NaN/Inf gradients: see :class:`Optimizer8bit`.

    >>> w = torch.nn.Parameter(torch.zeros(5000))
    >>> opt = Adam8bit([w], lr=0.01)
    >>> w.grad = torch.ones_like(w); opt.step()
    >>> round(w[0].item(), 6), opt.state[w]["exp_avg_sq"].dtype
    (-0.01, torch.uint8)
    """

    _state_names = ("exp_avg", "exp_avg_sq")
    _signed = {"exp_avg": True, "exp_avg_sq": False}

    def __init__(
        self,
        params: Iterable,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        *,
        blocksize: int = 256,
        min_8bit_size: int = MIN_8BIT_SIZE,
        on_nonfinite: str = "skip",
    ) -> None:
        if not all(0.0 <= b < 1.0 for b in betas) or len(betas) != 2:
            raise ValueError(f"Adam8bit needs two betas in [0, 1), got {betas}")
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay)
        super().__init__(params, defaults, blocksize, min_8bit_size, on_nonfinite)

    def _update(self, p, grad, states, group, step):
        beta1, beta2 = group["betas"]
        m, v = states["exp_avg"], states["exp_avg_sq"]
        m.mul_(beta1).add_(grad, alpha=1.0 - beta1)
        v.mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)
        correction1 = 1.0 - beta1**step
        correction2 = math.sqrt(1.0 - beta2**step)
        denominator = (v.sqrt() / correction2).add_(group["eps"])
        if group["weight_decay"]:
            p.mul_(1.0 - group["lr"] * group["weight_decay"])
        p.addcdiv_(m, denominator, value=-group["lr"] / correction1)
