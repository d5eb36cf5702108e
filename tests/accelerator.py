"""A pretend accelerator for tests on a machine without one: real values on the CPU, device ``meta``.

CUDA refuses an operation that mixes a tensor on the GPU with a CPU tensor of one or more
dimensions ("Expected all tensors to be on the same device"); a CPU scalar (0-d) or a CPU index
passes. On a CPU-only machine every tensor is on the CPU, so a test never sees that error. Inside
``with pretend_accelerator():``

- ``x.to(DEVICE)`` (``DEVICE`` is ``meta``) gives an :class:`OnDevice` tensor: its values stay on
  the CPU, its ``device`` says ``meta``; ``torch.tensor``/``torch.as_tensor``/``new_tensor`` and the
  factories (``torch.zeros(..., device=x.device)``) with that device give one too, and ``.cpu()`` /
  ``.to("cpu")`` a plain tensor again;
- every ATen operation that touches one first runs on meta stand-ins of its arguments (no data):
  the meta kernels apply CUDA's device rules, so a CPU/device mix raises there ("Tensor on device
  cpu is not on the expected device meta"); data-dependent operations (``nonzero``, ``item``,
  boolean masks) cannot run there. Every operation is then held to the plain rule too (some meta
  kernels, convolution's, check no devices): no CPU tensor of one or more dimensions beside an
  :class:`OnDevice` one, except as an index or in a copy. Then it runs on the CPU values.

So a whole prediction, validation, loss or training epoch runs "on the accelerator" here, gives the
numbers the CPU gives, and fails where a CUDA run would fail on a device slip. ``module.to(DEVICE)``
swaps each parameter in place, so tied weights stay tied as on a real device. What it cannot stand
in for: autocast (``meta`` has none: ``torch.is_autocast_enabled("meta")`` answers False inside the
context, ``torch.autocast("meta")`` raises), ``.numpy()`` (it raises, as on CUDA), and tv_tensors
(an OnDevice tensor cannot become an ``Image`` or ``BoundingBoxes``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves, tree_map

DEVICE = torch.device("meta")
CPU = torch.device("cpu")
aten = torch.ops.aten

# Where a CPU tensor may meet a device tensor on CUDA too: as an index, or copied from/to.
MAY_MIX = {aten.index, aten.index_put, aten.index_put_, aten._index_put_impl_, aten._to_copy, aten.to, aten.copy_}


class OnDevice(torch.Tensor):
    """A tensor "on the accelerator": ``device`` is ``meta``, ``value`` holds its numbers on the CPU."""

    value: torch.Tensor

    @staticmethod
    def __new__(cls, value: torch.Tensor) -> OnDevice:
        return torch.Tensor._make_wrapper_subclass(
            cls,
            value.shape,
            strides=value.stride(),
            storage_offset=value.storage_offset(),
            dtype=value.dtype,
            device=DEVICE,
            requires_grad=value.requires_grad,
        )

    def __init__(self, value: torch.Tensor) -> None:
        self.value = value

    def __repr__(self) -> str:
        return f"OnDevice({self.value!r})"

    def as_subclass(self, cls):  # what the collators do to tv_tensors images: a plain tensor is this one
        if cls is torch.Tensor:
            return self
        raise TypeError(f"an OnDevice tensor cannot become a {cls.__name__}")

    def untyped_storage(self):  # the values' storage: tied weights share one, as on a real device
        return self.value.untyped_storage()

    def tolist(self):  # CUDA tensors have tolist (it synchronises); tensor subclasses do not
        return self.value.tolist()

    def new_tensor(self, data, dtype=None, device=None, requires_grad=False) -> torch.Tensor:
        made = torch.tensor(data, dtype=dtype or self.dtype)
        return made.to(device if device is not None else self.device).requires_grad_(requires_grad)

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        raise RuntimeError(f"{func} on an OnDevice tensor outside pretend_accelerator()")


def _meta_stand_in(x):
    if isinstance(x, OnDevice):
        return torch.empty_strided(x.shape, x.stride(), dtype=x.dtype, device=DEVICE)
    return x


def _values(x):
    """What an argument is on the CPU: an OnDevice tensor's values, the CPU for the pretend device."""
    if isinstance(x, OnDevice):
        return x.value
    return CPU if isinstance(x, torch.device) and x == DEVICE else x


def _is_device(device) -> bool:
    return device is not None and torch.device(device) == DEVICE


def _conversion_target(func, args, kwargs) -> torch.device | None:
    """Where ``.to(...)`` / ``_to_copy`` sends its tensor (None: elsewhere, or not a conversion)."""
    if func.overloadpacket not in (aten.to, aten._to_copy):
        return None
    if kwargs.get("device") is not None:
        return torch.device(kwargs["device"])
    for arg in args[1:]:
        if isinstance(arg, (torch.device, torch.Tensor)):
            return arg if isinstance(arg, torch.device) else arg.device
    return None


def _cpu_beside_device(leaves) -> str | None:
    """The first CPU tensor of one or more dimensions among ``leaves``, described, when one is there."""
    for leaf in leaves:
        if isinstance(leaf, torch.Tensor) and not isinstance(leaf, OnDevice) and leaf.device == CPU and leaf.ndim:
            return f"a CPU tensor of shape {tuple(leaf.shape)}"
    return None


class PretendAccelerator(TorchDispatchMode):
    """The dispatch mode behind :func:`pretend_accelerator`; counts what it checked and how."""

    def __init__(self) -> None:
        super().__init__()
        self.ran_on_meta = 0  # operations whose meta kernel ran (and applied its device rules)
        self.cannot_run_on_meta: set[str] = set()  # data-dependent ones: held to the plain rule alone

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        leaves = tree_leaves((args, kwargs))
        to_device = any(isinstance(x, torch.device) and x == DEVICE for x in leaves)
        if not to_device and not any(isinstance(x, OnDevice) for x in leaves):
            return func(*args, **kwargs)
        self._check(func, args, kwargs, leaves)
        for leaf in leaves:
            if isinstance(leaf, torch.Tensor) and not isinstance(leaf, OnDevice) and leaf.device == DEVICE:
                raise AssertionError(f"{func}: a meta tensor without values reached the pretend accelerator")
        out = func(*tree_map(_values, args), **tree_map(_values, kwargs))
        values = {id(x.value): x for x in leaves if isinstance(x, OnDevice)}
        if _conversion_target(func, args, kwargs) == CPU:  # .cpu(), .to("cpu"): a plain tensor, a copy
            return out.clone() if id(out) in values else out

        def wrap(x):
            if isinstance(x, torch.Tensor) and not isinstance(x, OnDevice):
                same = values.get(id(x))  # an in-place operation returns its input
                if same is not None:
                    return same
                with torch.inference_mode(x.is_inference()):  # a view of a normal tensor is normal
                    return OnDevice(x)
            return x

        return tree_map(wrap, out)

    def _check(self, func, args, kwargs, leaves) -> None:
        """The meta kernel's device rules where it has them, then the plain rule for every operation
        (some meta kernels, convolution's among them, check no devices)."""
        try:
            func(*tree_map(_meta_stand_in, args), **tree_map(_meta_stand_in, kwargs))
        except Exception as exc:  # noqa: BLE001 - meta kernels fail in many ways; only a device refusal counts
            message = str(exc)
            if isinstance(exc, RuntimeError) and "device" in message and "meta tensor" not in message:
                raise  # the device rules said no: a CUDA run would fail here
            self.cannot_run_on_meta.add(str(func))
        else:
            self.ran_on_meta += 1
        found = None if func.overloadpacket in MAY_MIX else _cpu_beside_device(leaves)
        if found:
            raise RuntimeError(f"{func}: {found} beside a tensor on the accelerator (device {DEVICE})")


_is_autocast_enabled, _tensor, _as_tensor = torch.is_autocast_enabled, torch.tensor, torch.as_tensor


def _autocast_enabled(*args, **kwargs) -> bool:
    if args and args[0] == DEVICE.type:
        return False
    return _is_autocast_enabled(*args, **kwargs)


def _from_data(make):
    # torch.tensor(data, device=...) builds its tensor below the dispatch modes: build it on the
    # CPU, then move it (which the mode sees).
    def build(data, *args, device=None, **kwargs):
        if _is_device(device):
            return make(data, *args, **kwargs).to(DEVICE)
        return make(data, *args, device=device, **kwargs)

    return build


@contextlib.contextmanager
def pretend_accelerator() -> Iterator[PretendAccelerator]:
    """Run the block with ``DEVICE`` as a pretend accelerator (see the module's docstring)."""
    swap = torch.__future__.get_swap_module_params_on_conversion()
    # module.to(DEVICE) swaps each parameter in place: a weight tied in two modules stays one
    # (otherwise each module would get its own copy, as .to() never does on a real device)
    torch.__future__.set_swap_module_params_on_conversion(True)
    torch.is_autocast_enabled = _autocast_enabled
    torch.tensor, torch.as_tensor = _from_data(_tensor), _from_data(_as_tensor)
    try:
        with PretendAccelerator() as mode:
            yield mode
    finally:
        torch.is_autocast_enabled, torch.tensor, torch.as_tensor = _is_autocast_enabled, _tensor, _as_tensor
        torch.__future__.set_swap_module_params_on_conversion(swap)


def on_cpu(value):
    """``value`` (a tensor, or a structure of them) with every :class:`OnDevice` tensor as a plain CPU one."""
    return tree_map(lambda x: x.value.clone() if isinstance(x, OnDevice) else x, value)
