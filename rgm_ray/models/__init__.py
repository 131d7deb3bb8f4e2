"""Generators (PixelCNN++, VAE), the domain ResNet, their training and checkpoints (stage models)."""

from rgm_ray.models.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from rgm_ray.models.pixelcnnpp import PixelCNNpp, PixelCNNppConfig
from rgm_ray.models.resnet import ResNet, ResNetConfig
from rgm_ray.models.vae import VAE, VAEConfig

__all__ = ["CheckpointError", "PixelCNNpp", "PixelCNNppConfig", "ResNet", "ResNetConfig", "VAE", "VAEConfig",
           "load_checkpoint", "save_checkpoint"]
