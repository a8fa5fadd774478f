"""A fully connected network trained on a chosen kernel set (``python -m nn.train``).

Modules, in the order a run uses them:

    nn.data             IDX / CSV loaders, finding data sets on disk, verified atomic downloads
    nn.model            init_params, MLP on a KernelSet (forward / backward / train_step), Optimizer, Batches
    nn.engine           KernelEngine: the model, its optimizer and its data, driven one epoch at a time
    nn.torch_reference  TorchEngine: the same network as nn.Module + autograd + torch.optim + DataLoader
    nn.checkpoint       atomic .npz checkpoints (weights, optimizer state, position, RNG state)
    nn.train            Config, setup(), train(), main(): the CLI, the loop, metrics.json, plots
    nn.compare          one configuration on every set and the reference: results/compare.md
    nn.plots            loss / accuracy curves, confusion matrix, comparison chart
"""
