"""The U-Net branch: smp's ResNet U-Net (ResNet50 as in the paper), opened up between encoder
and decoder.

The MDF model needs the encoder's skip features on their own (for the skip projection) and
needs to modulate them (FiLM) before the decoder sees them, so the U-Net is driven in three
steps here instead of through ``smp.Unet.forward``.

Skip levels: smp's ResNet50 encoder gives six features; at a 512 input they are (3, 512),
(64, 256), (256, 128), (512, 64), (1024, 32), (2048, 16) as (channels, side). Features 1..4 are
exactly the four skip connections smp's U-Net decoder consumes (feature 0 is the input itself and
feature 5 is the bottleneck the decoder starts from), so the same four tensors are fused into the
MLLM and modulated by FiLM, as the paper describes. They include the stride-2 level, where
thin vessels and microaneurysms are still resolved: the fine detail the paper says the MLLM's
vision tower loses. ResNet18 and ResNet34 (``unet_encoder``) give the same sides with channels
(64, 64, 128, 256, 512).
"""

from __future__ import annotations

from pathlib import Path

import segmentation_models_pytorch as smp
import torch
from safetensors.torch import load_file
from segmentation_models_pytorch.encoders.resnet import ResNetEncoder
from torch import nn

from mdf_model.checkpoint import CheckpointError

__all__ = ["FundusUNet", "load_encoder_weights"]

# ImageNet statistics, which smp's ResNet encoders expect.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def load_encoder_weights(encoder: ResNetEncoder, path: Path) -> None:
    """Load ResNet encoder weights (safetensors or a torch state dict) strictly from a file."""
    if not path.is_file():
        raise CheckpointError(f"{path}: U-Net encoder weight file not found")
    try:
        if path.suffix == ".safetensors":
            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
        # torchvision ResNet files carry the classifier head, which smp's encoder
        # load_state_dict drops (fc.weight, fc.bias) before loading the rest strictly.
        encoder.load_state_dict(state, strict=True)
    except (RuntimeError, OSError, ValueError) as error:
        raise CheckpointError(
            f"{path}: not usable as weights of this ResNet encoder: {error}"
        ) from error


class FundusUNet(nn.Module):
    """smp ``Unet(encoder)`` with access to its skips. Input: ImageNet-normalised RGB."""

    def __init__(
        self,
        *,
        classes: int,
        decoder_channels: tuple[int, ...],
        skip_levels: tuple[int, ...],
        encoder: str = "resnet50",
        encoder_weights: Path | None = None,
    ) -> None:
        super().__init__()
        self.net = smp.Unet(
            encoder,
            encoder_weights=None,
            classes=classes,
            decoder_channels=decoder_channels,
        )
        self.skip_levels = skip_levels
        if encoder_weights is not None:
            load_encoder_weights(self.net.encoder, encoder_weights)
        self.use_memory_format(torch.channels_last)
        encoder = self.net.encoder
        # The encoder's stages, feature i = stages[i](feature i-1), so that a pass that only
        # needs the skips (label scoring, generation) can stop after the deepest skip level and
        # skip the bottleneck stage, about a sixth of the encoder. A plain list: the modules are
        # already registered under ``net`` and must not appear twice in the state_dict.
        self._stages: list[nn.Module] = [
            nn.Sequential(encoder.conv1, encoder.bn1, encoder.relu),
            nn.Sequential(encoder.maxpool, encoder.layer1),
            encoder.layer2,
            encoder.layer3,
            encoder.layer4,
        ]

    def use_memory_format(self, memory_format: torch.memory_format) -> FundusUNet:
        """Lay the weights and the inputs out in ``memory_format``. Channels-last (the default)
        is what GPU tensor cores read, and on the CPU the encoder ran 10 to 25% faster with it
        (bench/model_throughput.py: ``unet_encoder_ms_per_image`` against
        ``unet_encoder_ms_per_image_contiguous``); the state_dict is unaffected (tensors are
        saved contiguous)."""
        self.memory_format = memory_format
        self.net.to(memory_format=memory_format)
        return self

    @property
    def skip_channels(self) -> list[int]:
        return [self.net.encoder.out_channels[level] for level in self.skip_levels]

    def encode(self, pixels: torch.Tensor, *, for_decoder: bool = True) -> list[torch.Tensor]:
        """Encoder features, shallowest first (feature 0 is the input): all of them for the
        decoder, or only up to the deepest skip level when no mask will be decoded."""
        depth = len(self._stages) if for_decoder else max(self.skip_levels)
        features = [pixels.contiguous(memory_format=self.memory_format)]
        for stage in self._stages[:depth]:
            features.append(stage(features[-1]))
        return features

    def skips(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        return [features[level] for level in self.skip_levels]

    def decode(self, features: list[torch.Tensor], skips: list[torch.Tensor]) -> torch.Tensor:
        """Segmentation logits from encoder features whose skip levels are replaced by ``skips``."""
        features = list(features)
        for level, skip in zip(self.skip_levels, skips, strict=True):
            features[level] = skip
        return self.net.segmentation_head(self.net.decoder(features))
