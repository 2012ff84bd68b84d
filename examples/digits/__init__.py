"""The pieces of the digits examples, shared by `train_digits.py` and `evaluate_regularizers.py`.

    data.py    scikit-learn's digits (or your .npz), upsampled, split and standardised; occluders
    model.py   a small ResNet with the regulariser where the DropBlock paper puts DropBlock
    train.py   configurations, keep_prob schedules, one jitted train step per configuration,
               the training loop and its orbax checkpoints
    stats.py   t confidence intervals and paired comparisons over seeds
    report.py  tables, versions, figures

The entry points import this package as `digits`: run them as scripts
(`python examples/train_digits.py`), which puts `examples/` on the import path.
"""
