"""PatchDropout in a small ViT train step: step and compile time against the unmodified model.

    python benchmarks/vit_patch_dropout.py [--quick] [--batch 128] [--repeats 10] [--out FILE]

The ViT of ``examples/digits/vit.py`` (patch 4 on 32 x 32 inputs: 64 patch tokens and a CLS
token; depth 6, width 192, 3 heads, MLP 4x; position embeddings added before PatchDropout, as
timm does) in one jitted train step: forward, backward and an ``optax.adamw`` update, on a batch
of ``--batch`` random 32 x 32 x 3 images. Variants:

- the unmodified model: no ``jaxdrop.patch_dropout`` call at all (the reference of every ratio);
- ``jaxdrop.patch_dropout`` at keep_prob 1.0 (which returns the tokens as they are: the model
  with the call in place);
- keep_prob 0.75, 0.5 and 0.25 (48, 32 and 16 of the 64 patch tokens, per example).

For each: the compile time (``jit(...).lower(...).compile()`` plus the first call) and the
median steady-state step, each as a ratio to the unmodified model, beside the ratio expected if
the cost were proportional to the tokens the blocks see (patch tokens kept plus the CLS token).
Attention's cost falls with the square of the tokens, the rest linearly, so the measured ratio
may fall below the proportional one. Timing follows ``harness.py``: every call ends in
``block_until_ready()``, the variants are timed round-robin (a burst of load hits them alike),
at most ``--case-budget`` seconds of timed calls per variant but at least 3.

``--quick`` checks the script in seconds: a 1-block ViT of width 64, batch 8, 3 repeats.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import harness

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "examples"))

KEEP_PROBS = (1.0, 0.75, 0.5, 0.25)
SIZE, PATCH = 32, 4
UNMODIFIED = "unmodified (no `patch_dropout` call)"


def variant_name(keep_prob: float) -> str:
    return f"`patch_dropout`, keep_prob {keep_prob}"


def cases(args) -> tuple[list[harness.Case], dict[str, int]]:
    """One case per variant, all on the same parameters and batch; and each one's token count."""
    import jax
    import jax.numpy as jnp
    import optax
    from digits.vit import ViT, kept_tokens

    tokens = (SIZE // PATCH) ** 2
    shape = dict(patch=PATCH, width=args.width, depth=args.depth, heads=args.heads)
    x = jax.random.normal(jax.random.key(1), (args.batch, SIZE, SIZE, 3), jnp.float32)
    y = jax.random.randint(jax.random.key(2), (args.batch,), 0, 10)
    params = jax.jit(lambda k: ViT(10, **shape).init(k, x[:1], False)["params"])(jax.random.key(0))
    tx = optax.adamw(1e-3, weight_decay=0.05)
    opt_state = tx.init(params)
    key = jax.random.key(3)

    def make(keep_prob: float | None):
        model = ViT(10, keep_prob=keep_prob, **shape)

        def train_step(params, opt_state, key, x, y):
            def objective(params):
                logits = model.apply({"params": params}, x, True, rngs={"dropout": key})
                return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

            loss, grads = jax.value_and_grad(objective)(params)
            updates, opt_state = tx.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state, loss

        def compile_():
            compiled = jax.jit(train_step).lower(params, opt_state, key, x, y).compile()
            return lambda: compiled(params, opt_state, key, x, y)

        return compile_

    out, kept = [], {}
    for keep_prob in (None, *args.keep_probs):
        name = UNMODIFIED if keep_prob is None else variant_name(keep_prob)
        kept[name] = tokens if keep_prob is None else kept_tokens(tokens, keep_prob)
        out.append(
            harness.Case(
                group=("vit",),
                name=name,
                mode="fwd+bwd+adamw",
                compile=make(keep_prob),
                sync=jax.block_until_ready,
            )
        )
    return out, kept


def report(args, measured: list[harness.Case], kept: dict[str, int], lines: list[str]) -> str:
    tokens = (SIZE // PATCH) ** 2
    ref = measured[0]
    rows = []
    for case in measured:
        rows.append(
            [
                case.name,
                f"{kept[case.name]} + CLS",
                harness.fmt(case.compile_s),
                harness.fmt(harness.ratio(case.compile_s, ref.compile_s)),
                harness.fmt(case.median_ms, 1),
                harness.fmt(harness.ratio(case.median_ms, ref.median_ms)),
                harness.fmt((kept[case.name] + 1) / (tokens + 1)),
                str(len(case.times)),
            ]
        )
    header = [
        "variant",
        "tokens through the blocks",
        "compile (s)",
        "compile vs unmodified",
        "median step (ms)",
        "step vs unmodified",
        "proportional to tokens",
        "timed steps",
    ]
    title = (
        f"## PatchDropout in a ViT train step: patch {PATCH} on {SIZE}x{SIZE} ({tokens} tokens), "
        f"depth {args.depth}, width {args.width}, batch {args.batch}"
    )
    text = [title, "", "Command:", "", "```bash", args.command, "```", "", *lines, ""]
    text += harness.table(header, rows)
    return "\n".join(text)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="a tiny ViT, batch 8, 3 repeats")
    p.add_argument("--batch", type=int, default=None, help="batch size (128)")
    p.add_argument("--repeats", type=int, default=None, help="timed steps per variant (10)")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps after compiling (1)")
    p.add_argument(
        "--case-budget",
        type=float,
        default=60.0,
        help="timed seconds per variant at most, but at least 3 steps (60)",
    )
    p.add_argument(
        "--keep-probs",
        type=lambda s: tuple(float(v) for v in s.split(",")),
        default=KEEP_PROBS,
        help="comma-separated (1.0,0.75,0.5,0.25)",
    )
    p.add_argument("--out", default=None, help="also write the Markdown section to this file")
    args = p.parse_args(argv)
    args.batch = args.batch or (8 if args.quick else 128)
    args.repeats = args.repeats or (3 if args.quick else 10)
    args.depth, args.width, args.heads = (1, 64, 2) if args.quick else (6, 192, 3)
    args.command = "python benchmarks/vit_patch_dropout.py " + " ".join(
        sys.argv[1:] if argv is None else argv
    )
    return args


def main(argv=None) -> str:
    args = parse_args(argv)
    harness.CASE_BUDGET_S = args.case_budget
    commit = harness.git_commit()
    # The machine header now, so that its load average is the one at the start.
    lines = harness.machine_lines(commit)
    start = time.perf_counter()
    measured, kept = cases(args)
    print(f"compiling {len(measured)} variants, then timing them round-robin", flush=True)
    harness.run_group(measured, args.repeats, args.warmup)
    minutes = (time.perf_counter() - start) / 60
    lines += [
        f"- Load average at the end: {harness.fmt(os.getloadavg()[0])}; "
        f"{minutes:.1f} minutes in all",
        "- Steady state: the median of the timed steps, after the compiling call, "
        f"{args.warmup} warm-up step(s) and one untimed step that sizes the repeats; compile "
        "time: `jit(...).lower(...).compile()` plus the first call; the variants are timed "
        "round-robin, every call ends in `block_until_ready()`",
    ]
    text = report(args, measured, kept, lines)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    return text


if __name__ == "__main__":
    main()
