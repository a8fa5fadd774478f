"""The one exception type the trainer shows to its user as a single line.

Loaders, the config check and the checkpoint reader raise UsageError with a message that says
what is wrong and how to fix it; ``nn.train.main`` prints it as ``error: ...`` on stderr and
exits with status 2, so bad input never ends in a traceback.
"""


class UsageError(Exception):
    """Bad input from the user (options, data files, checkpoints): one clear line, no traceback."""


class TrainingDiverged(Exception):
    """The loss became NaN or infinite; the message says where and which checkpoint was kept."""
