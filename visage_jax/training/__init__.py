"""Training: the state and the jitted step (`step`), the checks of a run before any work
(`checks`), the loop (`loop`), what a run shows and records (`reporting`), where its weights come
from and go (`weights`), and the FLOPs for MFU (`flops`).

May import everything below it (evaluation, inference, data, models, metrics, runtime), never
`cli`."""
