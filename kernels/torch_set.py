"""The torch set: the same ops written with PyTorch tensor operations, on the CPU or on CUDA.

This is the framework reference: each op is what a PyTorch user would call (torch.mm,
addmm, log_softmax, the optimizers' own update formulas), so measuring it measures PyTorch's
kernels plus its per-call dispatch. Gradients are computed by hand, as in the other sets; the
autograd version of the same network lives in nn/torch_reference.py.
"""

import math

import torch

from ._layers import ACT_RELU, ACT_TANH, dropout_torch

THREADS_KEY = "torch"


def unavailable_reason(device):
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        return f"kernel set 'torch': {device!r} is not a device torch knows ({exc}); use 'cpu' or 'cuda'"
    if dev.type == "cpu":
        return None
    if dev.type != "cuda":
        return f"kernel set 'torch' supports devices 'cpu' and 'cuda', not {device!r}"
    if not torch.cuda.is_available():
        return (
            "kernel set 'torch' cannot use device 'cuda': no CUDA GPU is visible to PyTorch "
            "(torch.cuda.is_available() is False); use device='cpu' or run on a machine with a GPU"
        )
    if dev.index is not None and dev.index >= torch.cuda.device_count():
        return f"kernel set 'torch': {device!r} does not exist; this machine has {torch.cuda.device_count()} GPU(s)"
    return None


def set_threads(n):
    torch.set_num_threads(n)


@torch.no_grad()
def matmul(a, b, out, trans_a, trans_b):
    torch.mm(a.T if trans_a else a, b.T if trans_b else b, out=out)


@torch.no_grad()
def relu(x, out):
    torch.clamp(x, min=0, out=out)


@torch.no_grad()
def relu_backward(grad_y, y, out):
    torch.mul(grad_y, y > 0, out=out)


@torch.no_grad()
def tanh(x, out):
    torch.tanh(x, out=out)


@torch.no_grad()
def tanh_backward(grad_y, y, out):
    # out = grad_y * (1 - y^2), op by op as the numpy set rounds it
    t = torch.mul(y, y)
    t.neg_().add_(1)                                  # 1 - y^2 (negation is exact)
    torch.mul(grad_y, t, out=out)


@torch.no_grad()
def dropout(x, out, key, threshold, scale):
    dropout_torch(x, out, key, threshold, scale)


@torch.no_grad()
def softmax_cross_entropy(logits, labels, grad):
    # logits (B, C), labels (B,) int64, grad (B, C)
    batch = logits.shape[0]
    log_probs = torch.log_softmax(logits, dim=1)
    picked = log_probs.gather(1, labels[:, None])
    loss = -picked.mean()
    torch.exp(log_probs, out=grad)                    # softmax
    grad.scatter_add_(1, labels[:, None], torch.full_like(picked, -1.0))   # - onehot
    grad.div_(batch)
    return loss


@torch.no_grad()
def linear(x, w, b, out, act):
    torch.addmm(b, x, w, out=out)
    if act == ACT_RELU:
        out.clamp_(min=0)
    elif act == ACT_TANH:
        out.tanh_()


@torch.no_grad()
def linear_backward(x, w, y, grad_y, grad_x, grad_w, grad_b, act):
    g = grad_y
    if act == ACT_RELU:
        g = grad_y * (y > 0)
    elif act == ACT_TANH:
        g = torch.empty_like(grad_y)
        tanh_backward(grad_y, y, g)
    torch.mm(x.T, g, out=grad_w)
    torch.sum(g, dim=0, out=grad_b)
    if grad_x is not None:
        torch.mm(g, w.T, out=grad_x)


@torch.no_grad()
def sgd_step(param, grad, velocity, lr, momentum, weight_decay):
    g = grad.add(param, alpha=weight_decay) if weight_decay else grad
    if velocity is not None:
        velocity.mul_(momentum).add_(g)
        g = velocity
    param.add_(g, alpha=-lr)


@torch.no_grad()
def adam_step(param, grad, m, v, step, lr, beta1, beta2, eps, weight_decay):
    g = grad.add(param, alpha=weight_decay) if weight_decay else grad
    m.lerp_(g, 1.0 - beta1)
    v.mul_(beta2).addcmul_(g, g, value=1.0 - beta2)
    step_size = lr / (1.0 - beta1**step)
    denom = (v.sqrt() / math.sqrt(1.0 - beta2**step)).add_(eps)
    param.addcdiv_(m, denom, value=-step_size)
