r"""Many processes, one program: JAX's multi-process runtime for :func:`lamb.experiments.train.fit`.

On a TPU pod slice, a GPU cluster or several CPU processes, every process runs the same script. After
:func:`initialize` (``jax.distributed.initialize``), ``jax.devices()`` lists the devices of *all* processes
and ``jax.local_devices()`` this process's own; ``train.fit`` builds its mesh over all of them, each process
feeds only the rows of the global batch that its devices hold, and XLA's all-reduce crosses processes (on GPU
NCCL, on TPU the ICI links, on CPU gloo over TCP -- JAX's default CPU collectives since 0.4.3x,
``jax_cpu_collectives_implementation="gloo"``). Nothing here communicates by itself.

Where the arguments come from, in this order:

1. explicit arguments (``--coordinator-address``, ``--num-processes``, ``--process-id``,
   ``--local-device-ids`` of ``python -m lamb train``);
2. JAX's environment variables ``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID``,
   ``JAX_LOCAL_DEVICE_IDS``;
3. JAX's cluster detection (``jax.distributed.initialize()`` with no arguments), which reads Cloud TPU pod
   metadata, SLURM (``SLURM_*``) and Open MPI (``OMPI_*``) launch variables.

:func:`wants_initialize` says whether a launch asks for several processes: explicit arguments, the JAX
variables, ``SLURM_NTASKS > 1`` or ``OMPI_COMM_WORLD_SIZE > 1``. A Cloud TPU pod slice cannot be recognised
from the environment alone (JAX asks the VM's metadata server), so on a pod pass ``--distributed yes``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

__all__ = ["initialize", "wants_initialize", "is_initialized", "describe", "optimizer_collectives"]

_ENV = {"coordinator_address": "JAX_COORDINATOR_ADDRESS", "num_processes": "JAX_NUM_PROCESSES",
        "process_id": "JAX_PROCESS_ID"}


def _int_env(name: str):
    value = os.environ.get(name)
    if value in (None, ""):
        return None
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} must be an integer") from None


def wants_initialize(coordinator_address: str | None = None, num_processes: int | None = None,
                     process_id: int | None = None, env: dict | None = None) -> bool:
    """Whether this launch asks for JAX's multi-process runtime (see the module docstring)."""
    env = os.environ if env is None else env
    if coordinator_address or num_processes is not None or process_id is not None:
        return True
    if env.get("JAX_COORDINATOR_ADDRESS"):
        return True
    for name in ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE"):
        try:
            if int(env.get(name, "1")) > 1:
                return True
        except ValueError:
            pass
    return False


def is_initialized() -> bool:
    """Whether ``jax.distributed.initialize`` has run in this process."""
    import jax

    return bool(jax.distributed.is_initialized())


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, local_device_ids: Sequence[int] | None = None,
               initialization_timeout: int = 300) -> dict:
    """Start JAX's multi-process runtime; return :func:`describe`.

    Must run before any JAX computation. Arguments left ``None`` come from ``JAX_*`` environment variables
    or JAX's cluster detection (TPU pods, SLURM, Open MPI). Checks: ``num_processes >= 1``,
    ``0 <= process_id < num_processes``, and an address of the form ``host:port``.
    """
    import jax

    coordinator_address = coordinator_address or os.environ.get(_ENV["coordinator_address"]) or None
    if num_processes is None:
        num_processes = _int_env(_ENV["num_processes"])
    if process_id is None:
        process_id = _int_env(_ENV["process_id"])
    if coordinator_address is not None:
        host, sep, port = coordinator_address.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ValueError(f"coordinator address must be host:port (e.g. 10.0.0.1:1234), got {coordinator_address!r}")
    if num_processes is not None and (isinstance(num_processes, bool) or int(num_processes) < 1):
        raise ValueError(f"num_processes must be an int >= 1, got {num_processes!r}")
    if process_id is not None:
        if num_processes is None:
            raise ValueError(f"process_id={process_id} given without num_processes")
        if not 0 <= int(process_id) < int(num_processes):
            raise ValueError(f"process_id must be in [0, {num_processes}), got {process_id!r}")
    if is_initialized():
        return describe()
    jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                               process_id=process_id,
                               local_device_ids=None if local_device_ids is None else list(local_device_ids),
                               initialization_timeout=initialization_timeout)
    return describe()


def describe() -> dict:
    """This process's place: ``process_index``, ``process_count``, ``local_devices``, ``global_devices``,
    ``platform``."""
    import jax

    return {"process_index": jax.process_index(), "process_count": jax.process_count(),
            "local_devices": jax.local_device_count(), "global_devices": jax.device_count(),
            "platform": jax.devices()[0].platform}


_DTYPE_BYTES = {"f64": 8, "f32": 4, "bf16": 2, "f16": 2, "s32": 4, "u32": 4, "s64": 8, "u64": 8, "pred": 1,
                "s8": 1, "u8": 1}


def optimizer_collectives(tx, params, shardings) -> dict:
    """What one optimizer update all-reduces when ``params`` (and the gradients, and the state) are placed with
    ``shardings`` (a pytree of ``NamedSharding`` like ``params``): XLA compiles ``tx.update`` + apply for that
    placement and the compiled program's all-reduce instructions are read back.

    Returns ``{"ops": number of all-reduce instructions, "elements": values all-reduced, "bytes": their bytes}``.
    With replicated parameters (plain data parallelism) LAMB's update all-reduces nothing: every device holds
    whole layers. With parameters sharded along a mesh axis (FSDP, ZeRO) it all-reduces two scalars per sharded
    layer, :math:`\\|x^{(i)}\\|^2` and :math:`\\|u^{(i)}\\|^2` (XLA may fuse them into one instruction), and
    AdamW, whose update is elementwise, nothing.
    """
    import re

    import jax
    import optax

    params = jax.device_put(params, shardings)
    grads = jax.tree.map(lambda p: p * 0.5 + 0.25, params)
    state = tx.init(params)

    def step(p, g, s):
        updates, s = tx.update(g, s, p)
        return optax.apply_updates(p, updates), s

    text = jax.jit(step).lower(params, grads, state).compile().as_text()
    ops = elements = nbytes = 0
    for line in text.splitlines():
        m = re.search(r"=\s*(.*?)\s+all-reduce(?:-start)?\(", line)
        if not m:
            continue
        ops += 1
        for dtype, dims in re.findall(r"([a-z]+\d*)\[([\d,]*)\]", m.group(1)):
            n = 1
            for d in filter(None, dims.split(",")):
                n *= int(d)
            elements += n
            nbytes += n * _DTYPE_BYTES.get(dtype, 4)
    return {"ops": ops, "elements": elements, "bytes": nbytes}
