"""A check that every process of a multi-process run passes the same key.

Under ``jax.distributed`` a key passed to a global ``jax.jit`` is a replicated input: JAX assumes
it is equal on every process and does not check. If it is not, each process's devices draw their
part of the mask from that process's key, silently (``tests/test_multihost.py`` shows exactly
what comes out). :func:`check_same_key` makes the assumption checkable at the cost of one small
host-side all-gather.
"""

from __future__ import annotations

import hashlib

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from jaxdrop._src import checks


def _fingerprint(rng: jax.Array) -> np.ndarray:
    """SHA-256 of the key's implementation, shape and bits, as 32 uint8: equal-sized on every
    process whatever the key, so the all-gather never fails on a shape or type mismatch."""
    try:
        data = jax.random.key_data(rng)
    except (TypeError, ValueError) as e:
        raise TypeError(
            "`rng` must be a PRNG key (jax.random.key or jax.random.PRNGKey), got "
            f"{type(rng).__name__} of dtype {getattr(rng, 'dtype', None)} and shape "
            f"{np.shape(rng)}."
        ) from e
    if checks.is_traced(data):
        raise TypeError(
            "`rng` must be a concrete key: call check_same_key outside jax.jit, on the key you "
            "pass into the jitted step."
        )
    if isinstance(data, jax.Array) and not data.is_fully_addressable:
        # A global array spanning processes: only a replicated one has a whole copy here to
        # compare; the shards of a sharded one differ between processes by design.
        if not data.is_fully_replicated:
            raise ValueError(
                "`rng` must be one key (or array of keys) held whole by every process, got a "
                f"global array sharded over processes ({data.sharding}). Check the key it was "
                "derived from, before splitting and sharding it."
            )
        data = data.addressable_shards[0].data
    impl = (
        str(jax.random.key_impl(rng)) if jnp.issubdtype(rng.dtype, jax.dtypes.prng_key) else "raw"
    )
    digest = hashlib.sha256()
    digest.update(f"{impl}{np.shape(data)}{np.asarray(data).dtype}".encode())
    digest.update(np.ascontiguousarray(np.asarray(data)).tobytes())
    return np.frombuffer(digest.digest(), dtype=np.uint8)


def check_same_key(rng: jax.Array) -> None:
    """Raises ``ValueError`` unless every process holds the same key ``rng``.

    In a multi-process run (``jax.distributed.initialize``) every process must pass the same key
    to a global ``jax.jit``: the key is a replicated input, and JAX neither checks nor
    synchronises replicated inputs. A key that differs between processes makes each process's
    devices draw their part of every mask from that process's key. The result is a valid-looking
    array that neither key would give on its own, and with ``normalize="actual"`` a scale
    computed from a mixture of the two draws. Nothing fails.

    This function all-gathers a 32-byte fingerprint of the key (a SHA-256 of its
    implementation, shape and bits) over all processes, outside any ``jit``, and compares them.
    With one process it returns at once without communicating. It is a collective: every
    process must call it, at the same point of the program (or the others wait for it). Call it
    on the root key after deriving it from the seed, and, if you like, every few hundred steps on
    the step's key (``jax.random.fold_in(key, step)``).

    Args:
      rng: a PRNG key, typed (``jax.random.key``) or legacy (``jax.random.PRNGKey``), or an array
        of keys; a concrete value, not a tracer. A global array replicated over the processes
        is checked through this process's copy; one sharded over the processes is rejected.

    Returns:
      None.

    Raises:
      TypeError: ``rng`` is not a PRNG key, or is a tracer (inside ``jax.jit``).
      ValueError: the processes hold different keys (the message lists the groups of processes
        that agree), or ``rng`` is a global array sharded over the processes.

    Examples:
      >>> import jax, jaxdrop
      >>> key = jax.random.key(0)
      >>> jaxdrop.check_same_key(key)  # one process: nothing to compare
    """
    fingerprint = _fingerprint(rng)
    if jax.process_count() == 1:
        return
    gathered = np.asarray(multihost_utils.process_allgather(fingerprint))
    groups: dict[bytes, list[int]] = {}
    for process, row in enumerate(gathered.reshape(jax.process_count(), -1)):
        groups.setdefault(row.tobytes(), []).append(process)
    if len(groups) == 1:
        return
    described = "; ".join(f"processes {members} hold one key" for members in groups.values())
    raise ValueError(
        f"`rng` differs between processes: {described}. Every process must pass the same key "
        "to a global jax.jit: derive it from one seed (jax.random.key(seed)) and per step with "
        "jax.random.fold_in(key, step), and do not fold in jax.process_index(). For per-device "
        "streams, fold lax.axis_index into the key inside jax.shard_map."
    )
