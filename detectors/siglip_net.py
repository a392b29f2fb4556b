"""The SigLIP + LSTM network in torch, apart from the detector so that listing or configuring
detectors does not import torch and transformers (seconds at start-up); loaded when a detector
is set up or a checkpoint checked."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_sequence

# Fixed by the seed's checkpoints.
LSTM_LAYERS = 2


class SiglipLSTMNet(nn.Module):
    """The seed's network around a given SigLIP vision tower.

    Attribute names are the checkpoints' key prefixes. With ``nn.Identity()`` as the tower its
    state dict holds exactly the head keys.
    """

    def __init__(self, backbone: nn.Module, hidden_size: int, lstm_hidden: int) -> None:
        super().__init__()
        self.siglip_backbone = backbone
        self.lstm = nn.LSTM(
            hidden_size,
            lstm_hidden,
            num_layers=LSTM_LAYERS,
            batch_first=True,
            bidirectional=True,
        )
        self.video_classifier = nn.Linear(2 * lstm_hidden, 1)
        self.image_classifier = nn.Linear(hidden_size, 1)

    def embed(self, pixels: torch.Tensor) -> torch.Tensor:
        """Frames (N, 3, H, W) -> pooled embeddings (N, hidden)."""
        pooled: torch.Tensor = self.siglip_backbone(pixel_values=pixels).pooler_output
        return pooled

    def video_logits(self, sequences: Sequence[torch.Tensor]) -> torch.Tensor:
        """One logit per embedding sequence (lengths may differ): the last layer's final
        forward and backward hidden states -> ``video_classifier``."""
        lengths = torch.tensor([len(s) for s in sequences])
        packed = pack_padded_sequence(
            pad_sequence(list(sequences), batch_first=True),
            lengths,
            batch_first=True,
            enforce_sorted=False,
        )
        _, (h_n, _) = self.lstm(packed)
        logits: torch.Tensor = self.video_classifier(torch.cat([h_n[-2], h_n[-1]], dim=1))
        return logits.squeeze(-1)

    def frame_logits(self, pooled: torch.Tensor) -> torch.Tensor:
        """One logit per embedded frame."""
        logits: torch.Tensor = self.image_classifier(pooled)
        return logits.squeeze(-1)


class PooledTower(nn.Module):
    """``SiglipLSTMNet.embed`` as a module of its own, one tensor in and one out: what is
    exported to ONNX."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        pooled: torch.Tensor = self.backbone(pixel_values=pixels).pooler_output
        return pooled
