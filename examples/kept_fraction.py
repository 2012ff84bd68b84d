"""Applies DropBlock to a ResNet-shaped array and prints the kept fraction per layer setting.

    python examples/kept_fraction.py
"""

import argparse

import jax
import jax.numpy as jnp

import jaxdrop


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep-prob", type=float, default=0.9)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    key = jax.random.key(args.seed)
    print(f"jax {jax.__version__}, devices {jax.devices()}, keep_prob {args.keep_prob}")
    print(f"{'shape':>20} {'block':>5} {'calibrate':>9} {'kept fraction':>13}")
    for shape in [(16, 56, 56, 64), (16, 28, 28, 128), (16, 14, 14, 256), (16, 7, 7, 512)]:
        x = jnp.ones(shape)
        for block in (3, 7):
            for calibrate in (False, True):
                key, sub = jax.random.split(key)
                y = jaxdrop.dropblock(sub, x, args.keep_prob, block, calibrate=calibrate)
                kept = float(jnp.mean(y != 0))
                print(f"{str(shape):>20} {block:>5} {calibrate!s:>9} {kept:>13.4f}")


if __name__ == "__main__":
    main()
