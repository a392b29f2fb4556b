"""The color-cues network in torch, apart from the detector so that listing or configuring
detectors does not import torch (seconds at start-up); loaded when a detector is set up."""

from __future__ import annotations

import torch
from torch import nn

# The seed's fc1 width; fixed by its checkpoints.
_FC1_SIZE = 32


class ColorCuesNet(nn.Module):
    """The seed's network: LSTM -> last hidden state -> dropout -> fc1 -> ReLU -> fc2 (a logit).

    Attribute names ``lstm``, ``fc1``, ``fc2`` are the checkpoints' key prefixes.
    """

    def __init__(self, input_size: int, hidden_size: int, dropout: float) -> None:
        super().__init__()
        self.lstm = nn.LSTM(input_size, hidden_size, batch_first=True)
        self.dropout = nn.Dropout(dropout)
        self.fc1 = nn.Linear(hidden_size, _FC1_SIZE)
        self.relu = nn.ReLU()
        self.fc2 = nn.Linear(_FC1_SIZE, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Windows (batch, steps, features) -> one logit per window (batch,)."""
        out, _ = self.lstm(x)
        hidden = self.dropout(out[:, -1, :])
        logits: torch.Tensor = self.fc2(self.dropout(self.relu(self.fc1(hidden))))
        return logits.squeeze(-1)
