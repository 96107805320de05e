"""Own networks for sweeps/own_module.yaml (and an example of a module file): factories that take
no arguments and return a torch.nn.Module mapping a batch of MNIST images, (B, 1, 28, 28), to
10 class logits. ibray measures every activation module (each nn.ReLU) and the softmax output,
each quantized to the sweep's bits; see README.md, "Your own PyTorch module"."""

from torch import nn


def lenet():
    """A small LeNet-style CNN: two 5x5 convolutions (4 and 8 channels), each max-pooled, then
    two dense layers. Pooling comes before the ReLU (the same values: ReLU and max-pooling
    commute), so the measured layers are the pooled ones: 4x12x12 = 576, 8x4x4 = 128 and 32
    neurons wide, plus the output."""
    return nn.Sequential(
        nn.Conv2d(1, 4, 5),  # 28x28 -> 24x24
        nn.MaxPool2d(2),  # -> 12x12
        nn.ReLU(),
        nn.Conv2d(4, 8, 5),  # -> 8x8
        nn.MaxPool2d(2),  # -> 4x4
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(8 * 4 * 4, 32),
        nn.ReLU(),
        nn.Linear(32, 10),
    )


def mlp_batch_norm():
    """784-32-16-10 with batch norm before each ReLU: measured, the two ReLUs and the output."""
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(784, 32),
        nn.BatchNorm1d(32),
        nn.ReLU(),
        nn.Linear(32, 16),
        nn.BatchNorm1d(16),
        nn.ReLU(),
        nn.Linear(16, 10),
    )
