"""Evaluation: a dataset's videos scored frame by frame the way the challenge scores a submission
(`evaluate`), the per-video records a rerun resumes from (`records`), and the trainer's
validation, an evaluation of a prepared split (`validation`).

May import inference, data, models, metrics and runtime; never training or `cli`."""
