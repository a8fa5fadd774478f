"""A fully connected network trained on a chosen kernel set (``python -m nn.train``)."""
