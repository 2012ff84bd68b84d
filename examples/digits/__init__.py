"""The pieces of the digits examples, shared by `train_digits.py` and `evaluate_regularizers.py`.

    data.py        scikit-learn's digits (or your .npz), upsampled, split and standardised;
                   occluders
    model.py       a small ResNet with the regulariser where the DropBlock paper puts DropBlock,
                   and a plain six-convolution network without normalisation (linen)
    train.py       configurations, and the training loop over seeds and epochs
    trainers.py    keep_prob schedules, one jitted train step per configuration (linen, NNX)
    checkpoints.py the loop's orbax checkpoints (``--resume``)
    stats.py       t confidence intervals and paired comparisons over seeds
    report.py      tables, versions, figures
    sweeps.py      the configurations of `evaluate_regularizers.py`, each trained once per seed
                   (cached in runs.json)
    comparison.py  its tables of means and paired differences, its figures and results.md

The entry points import this package as `digits`: run them as scripts
(`python examples/train_digits.py`), which puts `examples/` on the import path.
"""
