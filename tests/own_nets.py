"""Own modules for tests/test_own_module.py, loaded by import path as a user's file would be
(not a test file: pytest collects nothing here)."""

from torch import nn


def bottleneck2():
    """The study's bottleneck2, 784-16-8-4-2-10 with ReLU, as a plain nn.Sequential."""
    return nn.Sequential(
        nn.Linear(784, 16),
        nn.ReLU(),
        nn.Linear(16, 8),
        nn.ReLU(),
        nn.Linear(8, 4),
        nn.ReLU(),
        nn.Linear(4, 2),
        nn.ReLU(),
        nn.Linear(2, 10),
    )


def mlp_batch_norm():
    """12 features -> 2 classes, with batch norm (buffers that training updates)."""
    return nn.Sequential(nn.Linear(12, 8), nn.BatchNorm1d(8), nn.Tanh(), nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 2))


class SmallCNN(nn.Module):
    """8x8 one-channel images -> 3 classes: two convolutions (the first pooled), a dense layer."""

    def __init__(self):
        super().__init__()
        self.conv1, self.act1, self.pool = nn.Conv2d(1, 3, 3), nn.ReLU(), nn.MaxPool2d(2)
        self.conv2, self.act2 = nn.Conv2d(3, 4, 3), nn.ReLU()
        self.fc1, self.act3, self.out = nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3)

    def forward(self, images):
        hidden = self.pool(self.act1(self.conv1(images)))
        hidden = self.act2(self.conv2(hidden)).flatten(1)
        return self.out(self.act3(self.fc1(hidden)))


def small_cnn():
    return SmallCNN()


def raises():
    raise RuntimeError("no network\ntoday")


def not_a_module():
    return "a string"


def three_logits():
    return nn.Sequential(nn.Linear(12, 4), nn.ReLU(), nn.Linear(4, 3))


def wrong_inputs():
    return nn.Sequential(nn.Linear(7, 4), nn.ReLU(), nn.Linear(4, 2))


def no_activation_module():
    return nn.Sequential(nn.Linear(12, 2))


def with_dropout():
    return nn.Sequential(nn.Linear(12, 4), nn.ReLU(), nn.Dropout(0.5), nn.Linear(4, 2))


def shared_relu():
    relu = nn.ReLU()
    return nn.Sequential(nn.Linear(12, 4), relu, nn.Linear(4, 4), relu, nn.Linear(4, 2))
