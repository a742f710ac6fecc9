"""Small networks for the demo and the tests. They live in the package (not in a script) because
``mlflow.pytorch`` pickles a module by reference to its class: the class must be importable wherever the
model is loaded."""

from __future__ import annotations

from audits.methods.network import require_torch

torch = require_torch()
nn = torch.nn


class SmallCNN(nn.Module):
    """Two 3x3 convolutions, max-pooling, dropout and two linear layers: a few thousand weights, trained in
    seconds on the CPU. ``forward`` returns logits; the input of ``head`` is the embedding.

    ``padding=1`` (zero padding, the default) keeps the 8x8 grid; ``padding=0`` (valid convolutions) shrinks it to
    4x4 before pooling. ``conv_dropout`` adds channel dropout (Dropout2d) after each convolution. Both exist for
    bench/study_mc_dropout.py, which measures how they change what MC dropout sees."""

    def __init__(self, in_channels: int = 1, n_classes: int = 10, size: int = 8, channels: int = 16,
                 hidden: int = 64, dropout: float = 0.25, padding: int = 1, conv_dropout: float = 0.0) -> None:
        super().__init__()

        def after_conv() -> list:  # nothing by default: the layers keep the indices older logged models have
            return [nn.Dropout2d(conv_dropout)] if conv_dropout else []

        self.features = nn.Sequential(
            nn.Conv2d(in_channels, channels, 3, padding=padding), nn.ReLU(), *after_conv(),
            nn.Conv2d(channels, 2 * channels, 3, padding=padding), nn.ReLU(), *after_conv(),
            nn.MaxPool2d(2),
        )
        side = (size + 4 * padding - 4) // 2  # two 3x3 convolutions, then pooling by 2
        self.flatten = nn.Flatten()
        self.hidden = nn.Sequential(nn.Linear(2 * channels * side**2, hidden), nn.ReLU(), nn.Dropout(dropout))
        self.head = nn.Linear(hidden, n_classes)

    def forward(self, x):
        return self.head(self.hidden(self.flatten(self.features(x))))


class SmallMLP(nn.Module):
    """A multilayer perceptron on flat inputs, with dropout."""

    def __init__(self, n_inputs: int, n_classes: int, hidden: int = 64, dropout: float = 0.2) -> None:
        super().__init__()
        self.hidden = nn.Sequential(nn.Flatten(), nn.Linear(n_inputs, hidden), nn.ReLU(), nn.Dropout(dropout),
                                    nn.Linear(hidden, hidden), nn.ReLU(), nn.Dropout(dropout))
        self.head = nn.Linear(hidden, n_classes)

    def forward(self, x):
        return self.head(self.hidden(x))
