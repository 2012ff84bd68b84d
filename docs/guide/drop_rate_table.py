"""Writes the drop-rate table of docs/guide/dropblock.md from the library's own gamma.

Each cell is the expected fraction of kept units, ``mean_i (1 - gamma) ** c_i`` where ``c_i`` is
the number of seed positions whose block covers unit ``i``, with the float32 ``gamma`` that
:func:`jaxdrop.dropblock` draws its seeds with (the paper's formula, or ``calibrate=True``). It is
exact, not sampled; ``tests/test_docs.py`` checks that the page holds this script's output and
that a sampled mask agrees with one cell. Regenerate after changing the gamma code:

    python docs/guide/drop_rate_table.py --write
"""

import argparse
import pathlib

import jax.numpy as jnp

from jaxdrop._src import dropblock as impl

PAGE = pathlib.Path(__file__).with_name("dropblock.md")
BEGIN = "<!-- drop-rate table: written by drop_rate_table.py, do not edit by hand -->"
END = "<!-- end of the drop-rate table -->"

KEEP_PROBS = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95)
# (map side, block side): ResNet-50's group outputs at 224 px (56, 28, 14, 7) with the paper's
# block 7, and the smaller blocks used on small maps. A 7 x 7 map with block 5 gives exactly the
# row of block 3 (the same coverage counts and the same gamma), so it is left out.
SETTINGS = ((56, 7), (28, 7), (14, 7), (14, 5), (7, 7), (7, 3))


def expected_kept(side: int, block: int, keep_prob: float, calibrate: bool) -> float:
    """The expected kept fraction of a ``side x side`` map with ``block x block`` blocks."""
    sizes, blocks = (side, side), (block, block)
    gamma = impl.seed_probability(jnp.float32(keep_prob), sizes, blocks, calibrate)
    return float(impl.expected_keep(gamma, *impl.coverage_histogram(sizes, blocks)))


def markdown() -> str:
    """The table, one row per setting, then the row that ``calibrate=True`` gives for all."""
    head = "| map, block | " + " | ".join(f"{p}" for p in KEEP_PROBS) + " |"
    lines = [head, "|---" * (len(KEEP_PROBS) + 1) + "|"]
    for side, block in SETTINGS:
        cells = [f"{expected_kept(side, block, p, False):.4f}" for p in KEEP_PROBS]
        lines.append(f"| {side} x {side}, {block} | " + " | ".join(cells) + " |")
    calibrated = {
        f"{expected_kept(side, block, p, True):.4f}" for side, block in SETTINGS for p in KEEP_PROBS
    }
    # With calibrate=True every setting gives its column's keep_prob; the page says so in one row,
    # and this checks it rather than assuming it.
    cells = [f"{p:.4f}" for p in KEEP_PROBS]
    assert calibrated == set(cells), f"calibrate=True gave {sorted(calibrated)}"
    lines.append("| any of the above, `calibrate=True` | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def page_table(text: str) -> str:
    """The table currently in the page, between the two markers."""
    start, end = text.index(BEGIN) + len(BEGIN), text.index(END)
    return text[start:end].strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help=f"rewrite the table in {PAGE.name}")
    args = parser.parse_args()
    table = markdown()
    if not args.write:
        print(table)
        return
    text = PAGE.read_text()
    PAGE.write_text(text.replace(page_table(text), table))
    print(f"wrote the table into {PAGE}")


if __name__ == "__main__":
    main()
