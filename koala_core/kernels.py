"""Faster exact-dtype CPU matmuls for the frozen target: fp32 Linear layers through oneDNN.

PyTorch's default fp32 CPU matmul (MKL) costs ~1.7x more for 2 rows than for 1 and is not even
monotonic in the row count; oneDNN's linear with the weight prepacked in its own layout is nearly
flat, and called on dense tensors (``mkldnn._linear_pointwise``, what Inductor's CPU freezing
calls) it also skips converting every activation to a oneDNN tensor and back, which cost ~30 us per
call, 211 calls a step (measured on this project's 2-core machine for SmolLM2-135M with
``koala cost``: decode step 44 ms against 56 ms with the conversions and 61 ms through MKL;
verifying 3-6 tokens costs one decode step). Speculative decoding lives on that ratio. The
kernels compute in fp32; they do not reproduce MKL bit for bit, and the engine's plain decoding uses
the same kernels as its verification, so "identical to plain greedy decoding" compares like with
like (tested on the real model).

The dense weight stays the module's ``weight`` (shared, untouched), so anything that reads it
(checkpoint fingerprints, draft heads reusing LM-head rows, state dicts) sees the same tensor. The
oneDNN copy doubles the memory of the Linear weights.
"""

from __future__ import annotations

import functools
import warnings

import torch
from torch import nn


def onednn_available() -> bool:
    return bool(torch.backends.mkldnn.is_available())


@functools.cache
def cpuinfo() -> str:
    """This machine's /proc/cpuinfo ('' where there is none): its flags and model name."""
    try:
        with open("/proc/cpuinfo") as f:
            return f.read()
    except OSError:
        return ""


def cpu_has_vnni() -> bool:
    """Whether this CPU multiplies int8 by int8 into int32 in one instruction (AVX512-VNNI or
    AVX-VNNI): then fbgemm's int8 GEMM neither saturates nor needs activations reduced to 7 bits."""
    flags = cpuinfo()
    return "avx512_vnni" in flags or "avx_vnni" in flags


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX): then bf16 matmuls read half
    the bytes of fp32 ones at full speed (measured here: the 8k-row draft LM head 0.28 ms in bf16
    against 0.81 ms through fp32 oneDNN)."""
    flags = cpuinfo()
    return "avx512_bf16" in flags or "amx_bf16" in flags


def warn_if_bf16_emulated(device, what: str) -> None:
    """bf16 on a CPU without native bf16 (AVX2 only, say) is emulated and several times *slower*
    than fp32 (measured on a 2-core AVX2 EPYC: `koala prepare --dtype bfloat16` 60 tokens/s
    against 300 in fp32): say so once, where the user chose it, instead of running slowly."""
    import warnings

    if torch.device(device).type == "cpu" and not cpu_has_bf16():
        warnings.warn(f"{what}: this CPU has no native bf16 (AVX512-BF16 or AMX), so bf16 is "
                      f"emulated and runs several times slower than fp32 here; use fp32 "
                      f"(float32) on this machine", RuntimeWarning, stacklevel=3)


INT8 = torch.int8  # as a draft dtype: weight-only int8 (Int8Weight), bf16 activations
DYNAMIC_INT8 = torch.qint8  # as a draft dtype: int8 weights and activations (DynamicInt8Weight)


def draft_dtype_name(dtype: torch.dtype) -> str:
    """A resolved draft dtype as ``--draft-dtype`` names it."""
    return "int8-dynamic" if dtype == DYNAMIC_INT8 else str(dtype).replace("torch.", "")


def draft_dtype(target, choice: str = "auto") -> torch.dtype:
    """The dtype a draft head computes in. Drafts need no bit-exactness (the target verifies every
    token in its own dtype), so on a CPU ``auto`` drafts in int8:

    * ``int8-dynamic`` (:data:`DYNAMIC_INT8`) on a CPU with VNNI (AVX512-VNNI or AVX-VNNI): int8
      weights *and* activations (quantised per call, smoothed by calibrated input ranges),
      through fbgemm's int8 GEMM. Measured on this project's AVX512-BF16 CPU: the draft LM head
      for four rows in 0.10 against 0.27 ms (``python benchmarks/draft_lm_head.py``), whole draft
      steps 15-25 % cheaper at the same tau (README, "Speed on this hardware"), since weight-only
      int8 converts every weight to bf16 before multiplying;
    * ``int8`` (:data:`INT8`, weight-only int8, bf16 activations) on other CPUs with torch's int8
      kernel: against bf16 on the AVX512-BF16 CPU, EAGLE's draft step 7.4 -> 4.8 ms and Hydra's
      4.0 -> 2.7 ms; on an AVX2-only CPU, whose bf16 is emulated, it still reads a quarter of fp32's
      bytes: 30-40 % less drafting time than fp32 in the engine (README);

    elsewhere bf16 where that is fast (CUDA, a CPU with native bf16), else the target's dtype. Both
    int8 kinds run on CPUs only; int8-dynamic needs the target's tokenizer (its calibration text:
    a model handed to transformers' ``generate`` without one drafts in int8)."""
    from .config import check_draft_dtype
    from .errors import ConfigError

    check_draft_dtype(choice)
    cpu = target.device.type == "cpu"
    if choice == "int8":
        if not cpu or not int8_available():
            raise ConfigError("--draft-dtype int8 runs on a CPU with torch's weight-only int8 "
                              "kernel; use bfloat16 here")
        return INT8
    calibratable = getattr(target, "tokenizer", None) is not None  # koala_core.calibration's text
    if choice == "int8-dynamic":
        if not cpu or not dynamic_int8_available():
            raise ConfigError("--draft-dtype int8-dynamic runs on a CPU with torch's fbgemm int8 "
                              "kernels (x86); use int8 or bfloat16 here")
        if not calibratable:
            raise ConfigError("--draft-dtype int8-dynamic calibrates on a text and needs the "
                              "target's tokenizer; this target has none: use int8")
        return DYNAMIC_INT8
    if choice != "auto":
        return torch.float32 if choice == "float32" else torch.bfloat16
    if cpu and dynamic_int8_available() and cpu_has_vnni() and calibratable:
        return DYNAMIC_INT8
    if cpu and int8_available():
        return INT8
    if target.dtype != torch.float32:
        return target.dtype
    fast = target.device.type == "cuda" or (cpu and cpu_has_bf16())
    return torch.bfloat16 if fast else torch.float32


class PackedWeight:
    """A oneDNN copy of a (weight, bias) pair that is never stale.

    It repacks when the weight or bias changed in place (``load_state_dict``, an optimizer step),
    was replaced, moved to another device or cast to another dtype, and it is used only for fp32
    CPU inputs that need no gradient: anything else (training, CUDA, bf16) takes the plain dense
    path, so gradients and devices behave exactly as without it.
    """

    def __init__(self, weight_of, bias_of=lambda: None) -> None:
        self._weight_of, self._bias_of = weight_of, bias_of  # callables: the module's live tensors
        self._key: tuple | None = None
        self._packed: tuple | None = None

    @staticmethod
    def _stamp(t: torch.Tensor | None) -> tuple:
        return () if t is None else (t.data_ptr(), t._version, t.device.type, t.dtype)

    def _cpu_inference(self, x: torch.Tensor) -> bool:
        """No gradient needed, input and weight on the CPU."""
        w = self._weight_of()
        needs_grad = torch.is_grad_enabled() and (x.requires_grad or w.requires_grad)
        return not needs_grad and x.device.type == "cpu" and w.device.type == "cpu"

    def usable(self, x: torch.Tensor) -> bool:
        return (self._cpu_inference(x) and x.dtype == torch.float32
                and self._weight_of().dtype == torch.float32)

    def pack(self, weight: torch.Tensor, bias: torch.Tensor | None) -> tuple:
        return pack(weight, bias)

    def apply(self, x: torch.Tensor, packed: tuple) -> torch.Tensor:
        return packed_linear(x, packed)

    def refresh(self) -> tuple:
        """The packed copy, packed again first if the weight or bias changed since."""
        w, b = self._weight_of(), self._bias_of()
        key = (self._stamp(w), self._stamp(b))
        if key != self._key:
            self._packed, self._key = self.pack(w, b), key
        return self._packed

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """``x @ weight.T + bias``: the packed copy when :meth:`usable`, else the dense path."""
        if not self.usable(x):
            w, b = self._weight_of(), self._bias_of()
            return torch.nn.functional.linear(x, w.to(x.dtype), None if b is None else b.to(x.dtype))
        return self.apply(x, self.refresh())


class OneDNNLinear(nn.Module):
    """Stand-in for an fp32 CPU ``nn.Linear``: oneDNN at inference, the same weights everywhere.

    The weight and bias stay this module's parameters (shared with the Linear it replaced), so
    state dicts, optimizers and ``.to()`` see them as before; see :class:`PackedWeight`. A member
    of a :class:`SiblingGroup` takes its rows of the group's one call where it can."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight = linear.weight
        self.bias = linear.bias
        self._packed = PackedWeight(lambda: self.weight, lambda: self.bias)
        self._group: tuple[SiblingGroup, int] | None = None  # (its group, its index), if grouped

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._group is not None:
            group, index = self._group
            out = group.output(index, x)
            if out is not None:
                return out
        return self._packed(x)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, onednn"


def _pointwise_available() -> bool:
    """Whether this torch has oneDNN's dense-in, dense-out linear on a prepacked weight (what
    Inductor's CPU freezing calls): no per-call conversion of the activations to oneDNN tensors."""
    ops = torch.ops.mkldnn
    return hasattr(ops, "_linear_pointwise") and hasattr(ops, "_reorder_linear_weight")


def onednn_path() -> str:
    """Which oneDNN call :func:`packed_linear` makes on this torch: ``pointwise`` (dense in and out)
    or ``mkldnn`` (converting every activation). The two differ in cost, not in results, so a
    saved cost curve names the path it was measured with."""
    return "pointwise" if _pointwise_available() else "mkldnn"


def pack(weight: torch.Tensor, bias: torch.Tensor | None = None) -> tuple:
    """A (weight, bias) pair in oneDNN's own layout for :func:`packed_linear`. mkldnn tensors
    cannot be buffers of a state dict: callers keep it in a :class:`PackedWeight`.

    The layout is oneDNN's generic one (no batch-size hint): a row's result is then the same bit
    for bit whether it is multiplied alone (a decode step) or among others (a verified tree)."""
    with torch.no_grad():
        if _pointwise_available():
            return ("pointwise", torch.ops.mkldnn._reorder_linear_weight(weight.detach()),
                    None if bias is None else bias.detach().float().contiguous())
        if bias is None:
            bias = torch.zeros(weight.shape[0])
        return "mkldnn", weight.detach().to_mkldnn(), bias.detach().float().to_mkldnn()


def packed_linear(x: torch.Tensor, packed: tuple) -> torch.Tensor:
    """``x @ weight.T + bias`` (x: (..., in)) with a :func:`pack`-ed weight."""
    kind, weight, bias = packed
    shape = x.shape
    flat = x.reshape(-1, shape[-1]).contiguous()
    if kind == "pointwise":
        y = torch.ops.mkldnn._linear_pointwise(flat, weight, bias, "none", [], "")
    else:
        y = torch._C._nn.mkldnn_linear(flat.to_mkldnn(), weight, bias).to_dense()
    return y.reshape(*shape[:-1], y.shape[-1])


def swap_linears(model: nn.Module, make, fits=lambda linear: True) -> int:
    """Replace every ``nn.Linear`` of ``model`` that ``fits`` by ``make(linear)``; returns how many."""
    swapped = 0
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, nn.Linear) and fits(child):
                setattr(module, name, make(child))
                swapped += 1
    return swapped


def use_onednn_linears(model: nn.Module) -> int:
    """Swap every fp32 CPU ``nn.Linear`` in ``model`` for :class:`OneDNNLinear` and group the
    siblings among them (:func:`fuse_siblings`); returns how many were swapped. Safe to train,
    reload or move afterwards: the packed copies follow the weights."""
    swapped = swap_linears(model, OneDNNLinear, lambda lin: lin.weight.dtype == torch.float32
                           and lin.weight.device.type == "cpu")
    fuse_siblings(model)
    return swapped


# Linears of one module that read the same input: vLLM's packed modules (qkv_proj, gate_up_proj)
SIBLINGS = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))


class SiblingGroup:
    """One call for sibling Linears that read the same input (q/k/v, gate/up): through oneDNN for
    the target, through a draft kernel (int8, int8-dynamic) for a head's decoder layers.

    A oneDNN call costs ~60 us beyond its arithmetic on a 2-core AVX2 EPYC (an 8 x 576 weight: 5 us
    in the primitive, 66-70 us a call), and SmolLM2-135M made 211 calls a step; one call over the
    siblings' stacked weights instead of three (and two) makes 121 (``python
    benchmarks/verify_paths.py``), as Inductor's CPU freezing concatenates linears.

    The first sibling called with an input computes all of their rows; each other sibling called
    with *that same tensor object* takes its columns (unless torch's version counter says it was
    changed in place since; inference tensors keep none, and the decoder layers that call these
    siblings never write to their input); called with anything else, it computes alone. Through
    oneDNN each sibling's result equals its own call bit for bit (its generic layout: tested), so
    fusing changes speed only (drafts need no exactness). The stacked copy is repacked when any
    member's weight or bias changes, like :class:`PackedWeight`; for gradients, other devices and
    dtypes the members run alone.
    """

    def __init__(self, members: list[OneDNNLinear]) -> None:
        self.members = members
        self.sizes = [m.out_features for m in members]
        self._key: tuple | None = None
        self._packed: tuple | None = None
        self._input: torch.Tensor | None = None  # the input whose outputs are waiting to be taken
        self._version = -1
        self._outputs: tuple[torch.Tensor, ...] = ()
        self._taken: set[int] = set()

    def usable(self, x: torch.Tensor) -> bool:
        return all(m._packed.usable(x) for m in self.members)

    def _stacked(self) -> tuple:
        key = tuple(PackedWeight._stamp(t) for m in self.members for t in (m.weight, m.bias))
        if key != self._key:
            biases = [m.bias for m in self.members]
            bias = None
            if any(b is not None for b in biases):
                bias = torch.cat([b if b is not None else m.weight.new_zeros(m.out_features)
                                  for m, b in zip(self.members, biases)])
            # packed like each member (oneDNN, int8, int8-dynamic), over the stacked rows
            self._packed = self.members[0]._packed.pack(torch.cat([m.weight for m in self.members]), bias)
            self._key = key
        return self._packed

    def output(self, index: int, x: torch.Tensor) -> torch.Tensor | None:
        """Member ``index``'s ``x @ weight.T + bias``, from one call for all members; None where
        the members must run alone. While grad mode is off (decoding), whether they can is
        checked once per input, not once per member (a check takes 15-20 us; once per member it
        cost ~3 ms a step of SmolLM2); with it on, every member checks again (a gradient may be
        wanted since)."""
        version = -1 if x.is_inference() else x._version  # inference tensors keep no version
        waiting = self._input is x and self._version == version and index not in self._taken
        if (not waiting or torch.is_grad_enabled()) and not self.usable(x):
            return None
        if not waiting:
            self._outputs = self.members[0]._packed.apply(x, self._stacked()).split(self.sizes, -1)
            self._input, self._version, self._taken = x, version, set()
        self._taken.add(index)
        out = self._outputs[index]
        if len(self._taken) == len(self.members):  # all taken: hold no reference to the input
            self._input, self._outputs = None, ()
        return out


def pack_now(model: nn.Module, *weights: PackedWeight) -> None:
    """Pack the copies of every :class:`OneDNNLinear` in ``model`` (oneDNN, int8, int8-dynamic)
    and of ``weights`` now, where their first call would: a loading target or a head made ready
    to draft, instead of the first request's forward (~0.3 s for SmolLM2-135M on this project's
    CPU) or the first draft step (~70-90 ms). Sibling groups pack their stacked copy, which is
    what their members run; a member's own copy stays unpacked until it runs alone."""
    groups = {}
    for module in model.modules():
        if isinstance(module, OneDNNLinear):
            if module._group is None:
                module._packed.refresh()
            else:
                groups[id(module._group[0])] = module._group[0]
    for group in groups.values():
        group._stacked()
    for weight in weights:
        weight.refresh()


def fuse_siblings(model: nn.Module) -> int:
    """Group the :data:`SIBLINGS` of every module whose members are all :class:`OneDNNLinear` of
    one kind (oneDNN, int8, int8-dynamic) and one input width into a :class:`SiblingGroup`;
    returns how many groups."""
    groups = 0
    for module in model.modules():
        for names in SIBLINGS:
            members = [getattr(module, name, None) for name in names]
            if not isinstance(members[0], OneDNNLinear) or len({type(m) for m in members}) != 1:
                continue
            if len({m.in_features for m in members}) != 1:
                continue
            group = SiblingGroup(members)
            for index, member in enumerate(members):
                member._group = (group, index)
            groups += 1
    return groups


def int8_available() -> bool:
    """Whether this torch has the CPU weight-only int8 matmul (``aten._weight_int8pack_mm``)."""
    return hasattr(torch.ops.aten, "_weight_int8pack_mm")


def quantize_rows(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 per output row: (int8 weight, bf16 scale), weight ~= int8 * scale[:, None]."""
    w = weight.detach().float()
    scale = (w.abs().amax(1) / 127.0).clamp_min(1e-12)
    q = (w / scale[:, None]).round().clamp(-127, 127).to(torch.int8).contiguous()
    return q, scale.to(torch.bfloat16)


class Int8Weight(PackedWeight):
    """A weight-only int8 copy of a (weight, bias) pair (one scale per output row; bf16
    activations), never stale, like :class:`PackedWeight`: it requantises when the weight changes
    and steps aside (the dense path) for gradients and devices other than the CPU. Half the bytes
    of bf16, which is what a draft step on a CPU waits for; drafts need no exactness (the target
    verifies every token)."""

    def usable(self, x: torch.Tensor) -> bool:
        return self._cpu_inference(x)

    def pack(self, weight: torch.Tensor, bias: torch.Tensor | None) -> tuple:
        q, scale = quantize_rows(weight)
        return q, scale, None if bias is None else bias.detach().to(torch.bfloat16)

    def apply(self, x: torch.Tensor, packed: tuple) -> torch.Tensor:
        q, scale, bias = packed
        shape = x.shape
        flat = x.reshape(-1, shape[-1]).to(torch.bfloat16).contiguous()
        y = torch.ops.aten._weight_int8pack_mm(flat, q, scale)
        if bias is not None:
            y = y + bias
        return y.reshape(*shape[:-1], y.shape[-1]).to(x.dtype)


class Int8Linear(OneDNNLinear):
    """Stand-in for a CPU ``nn.Linear`` at draft time: weight-only int8 (see :class:`Int8Weight`),
    the weights and the state dict unchanged."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__(linear)
        self._packed = Int8Weight(lambda: self.weight, lambda: self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8"


def use_int8_linears(model: nn.Module) -> int:
    """Swap every CPU ``nn.Linear`` in ``model`` for :class:`Int8Linear` and group the siblings
    among them (:func:`fuse_siblings`); returns how many were swapped."""
    swapped = swap_linears(model, Int8Linear, lambda lin: lin.weight.device.type == "cpu")
    fuse_siblings(model)
    return swapped


def dynamic_int8_available() -> bool:
    """Whether this torch's quantised engine is fbgemm's (x86 CPUs) and its dynamically quantised
    int8 linear runs (tried once on a small weight: torch has deprecated the quantised tensors it
    packs from, so a torch without them falls back to :data:`INT8` instead of failing)."""
    return torch.backends.quantized.engine in ("x86", "fbgemm") and _dynamic_int8_runs()


@functools.cache
def _dynamic_int8_runs() -> bool:
    try:
        w = torch.ones(8, 16)
        weight = DynamicInt8Weight(lambda: w)
        with torch.no_grad():
            return weight(torch.ones(2, 16)).shape == (2, 8)
    except (AttributeError, RuntimeError, NotImplementedError):
        return False


class DynamicInt8Weight(PackedWeight):
    """An int8 copy of a (weight, bias) pair (one scale per output row) for fbgemm's dynamically
    quantised linear: each call quantises its fp32 input to 8 bits (one scale and zero point per
    call, from the input's range), multiplies int8 by int8 into int32 (VNNI) and returns fp32.
    Never stale and stepping aside for gradients and other devices, like :class:`PackedWeight`.

    Why: for the few rows a draft step multiplies, torch's weight-only int8 kernel
    (:class:`Int8Weight`) widens every weight to bf16 first and so computes at bf16 speed; the
    integer GEMM reads the same bytes and multiplies four times as many products per instruction
    (the 8k-row draft LM head, four rows, its weights warm: 0.10 ms against 0.27 ms on this
    project's AVX512-BF16 CPU; ``python benchmarks/draft_lm_head.py``).

    One scale per call suits inputs without outlier channels only; given the ``input_range`` a
    layer's inputs reach per channel (:mod:`koala_core.calibration`), the copy is smoothed:
    the weight's columns multiplied by SmoothQuant's factor and every input divided by it (the
    same product). Drafts lose a little precision either way; the target verifies every token,
    so outputs do not change (tested)."""

    def __init__(self, weight_of, bias_of=lambda: None, input_range: torch.Tensor | None = None) -> None:
        super().__init__(weight_of, bias_of)
        self.input_range = input_range

    def usable(self, x: torch.Tensor) -> bool:
        return self._cpu_inference(x) and x.dtype == torch.float32

    def pack(self, weight: torch.Tensor, bias: torch.Tensor | None) -> tuple:
        from .calibration import smoothing

        w = weight.detach().float()
        smooth = smoothing(self.input_range, w)
        if smooth is not None:
            w = w * smooth
        scale = (w.abs().amax(1) / 127.0).clamp_min(1e-12).double()
        zero = torch.zeros(w.shape[0], dtype=torch.long)
        with warnings.catch_warnings():  # deprecated (torch 2.13), still what fbgemm packs from
            warnings.filterwarnings("ignore", message=".*quantize_per_channel.*deprecated")
            q = torch.quantize_per_channel(w, scale, zero, 0, torch.qint8)
        b = None if bias is None else bias.detach().float().contiguous()
        return torch.ops.quantized.linear_prepack(q, b), not cpu_has_vnni(), smooth

    def apply(self, x: torch.Tensor, packed: tuple) -> torch.Tensor:
        params, reduce_range, smooth = packed
        shape = x.shape
        flat = x.reshape(-1, shape[-1])
        flat = (flat / smooth) if smooth is not None else flat.contiguous()
        y = torch.ops.quantized.linear_dynamic(flat, params, reduce_range)
        return y.reshape(*shape[:-1], y.shape[-1])


class DynamicInt8Linear(OneDNNLinear):
    """Stand-in for a CPU ``nn.Linear`` at draft time: int8 weights and activations (see
    :class:`DynamicInt8Weight`), the weights and the state dict unchanged."""

    def __init__(self, linear: nn.Linear, input_range: torch.Tensor | None = None) -> None:
        super().__init__(linear)
        self._packed = DynamicInt8Weight(lambda: self.weight, lambda: self.bias, input_range)

    def extra_repr(self) -> str:
        smoothed = ", smoothed" if self._packed.input_range is not None else ""
        return f"in_features={self.in_features}, out_features={self.out_features}, int8-dynamic{smoothed}"


def use_dynamic_int8_linears(model: nn.Module, input_ranges: dict | None = None) -> int:
    """Swap every CPU ``nn.Linear`` in ``model`` for :class:`DynamicInt8Linear`, smoothed where
    ``input_ranges`` (Linear -> per-channel input range) has its range, and group the siblings
    among them (:func:`fuse_siblings`); returns how many were swapped."""
    ranges = input_ranges or {}
    swapped = swap_linears(model, lambda lin: DynamicInt8Linear(lin, ranges.get(lin)),
                           lambda lin: lin.weight.device.type == "cpu")
    fuse_siblings(model)
    return swapped
